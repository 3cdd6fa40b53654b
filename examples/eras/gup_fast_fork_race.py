"""GUP-fast racing with fork: a pin taken while fork write-protects the parent.

Run it on every era:   gupsim eras examples/eras/gup_fast_fork_race.py
(model only: the host cannot inject a step into the kernel's race window)

While the parent forks, another thread of it registers the buffer with io_uring
(pin_user_pages_fast, FOLL_WRITE | FOLL_LONGTERM) after fork decided which pages to
share and before it write-protected them (race point "fork:before_wrprotect"). Then the
parent writes its buffer and the device writes into the pinned page. Before 5.11 GUP-fast
ignores fork and pins the page fork is about to share: the parent's write copies it
away, and the device's write lands in the child's page (lost to the parent). From 5.11
(write_protect_seq) GUP-fast backs off, the slow path waits for fork's mmap_lock and
then breaks COW before pinning: the parent sees what the device wrote.
"""

PAGE = 4096
NAME = "GUP-fast pin racing fork's write-protect, then a device write"


def scenario(system):
    parent = system.spawn("app")
    buf = parent.map("anon", PAGE, fill=1)
    with parent.on_race("fork:before_wrprotect"):   # while the parent's fork runs,
        parent.uring_register([(buf, 0, PAGE)])     # a thread of it pins the buffer
    child = parent.fork()
    parent.write(buf, 0, b"\x02" * 8)               # the parent writes its buffer
    parent.uring_read_fixed(0, PAGE, 0xAA)          # the device writes into the pin
    parent.read(buf, 0, 8)                          # what the parent sees
    child.exit()


def expect(trace):
    """What the kernel guarantees since 5.11: the parent sees the device's write."""
    reads = [s for s in trace.steps if s.op.startswith("read")]
    if not reads or reads[-1].data != b"\xaa" * 8:
        return ["the device's write went to a page fork shared with the child"]
    return []
