"""CVE-2020-29374: a child reads what its parent writes after fork, through vmsplice.

Run it on every era:   gupsim eras examples/eras/vmsplice_after_fork.py

The child vmsplice()s a page it shares copy-on-write with the parent (a FOLL_GET
reference, no pin) and unmaps it; the parent then writes a secret. Before 5.8 the
parent's page is mapped once, so the write reuses it and the child's pipe reads the
secret. 5.8 broke COW inside GUP; from 5.9 a write reuses a page only when
page_count() == 1, so the pipe keeps the bytes that were spliced.
"""

PAGE = 4096
NAME = "vmsplice of a shared page, then the parent writes"
NEEDS = ()


def scenario(system):
    parent = system.spawn("app")
    buf = parent.map("anon", PAGE, fill=1)
    child = parent.fork()
    child.vmsplice(buf, 0, PAGE)                # the pipe holds a reference to the page
    child.munmap(buf)                           # the parent maps it alone now
    parent.write(buf, 0, b"secret" * 8)
    child.pipe_read(PAGE)                       # what the pipe delivers
    child.exit()


def expect(trace):
    """The pipe delivers what was spliced, never the parent's later write."""
    reads = [s for s in trace.steps if s.op.startswith("pipe_read")]
    if not reads or reads[0].data is None or reads[0].data[:6] == b"secret":
        return ["the child's pipe read the parent's write after fork"]
    return []
