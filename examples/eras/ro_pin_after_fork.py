"""A R/O pin that no longer sees what the process writes (the CVE-2020-29374 family).

Run it on one era:     gupsim run --kernel 5.13 examples/eras/ro_pin_after_fork.py
and on every era:      gupsim eras examples/eras/ro_pin_after_fork.py

The process writes its buffer, forks (the page is now shared copy-on-write with the
child), takes a short-term R/O pin of the buffer (process_vm_readv of itself) and writes
again while the pin is held. Up to 5.18 the pin takes the shared page as it is and the
write copies it away, so the pin reads the old bytes; 5.8 alone escaped by breaking COW
inside GUP. From 5.19 the pin unshares the page first (PG_anon_exclusive,
FAULT_FLAG_UNSHARE) and the write reuses it: the pin stays in sync.
"""

PAGE = 4096
NAME = "R/O pin of a page shared with a child, then a write"


def scenario(system):
    parent = system.spawn("app")
    buf = parent.map("anon", PAGE, fill=1)
    child = parent.fork()                       # buf is shared COW with the child
    parent.ro_pin_then_write(buf, 0, PAGE, 0xFF)  # what the R/O pins saw after the write
    child.exit()


def expect(trace):
    """What the kernel documents since 5.19: a R/O pin sees the process's later writes."""
    seen = [s for s in trace.steps if s.op.startswith("ro_pin_then_write")]
    if not seen or seen[0].data != b"\xff" * PAGE:
        return ["the R/O pin kept the page the process no longer maps"]
    return []
