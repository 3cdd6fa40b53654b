"""A scenario for `gupsim run`: fork while an io_uring fixed buffer is registered.

Run it on the model:           gupsim run examples/fork_with_pinned_buffer.py
and compare with this kernel:  gupsim run --host examples/fork_with_pinned_buffer.py

The buffer is pinned long-term (FOLL_WRITE | FOLL_LONGTERM). fork() must not share the
pinned page copy-on-write with the child, or the parent's next write would land in a
copy the device never sees (the CVE-2020-29374 family); the kernel copies it for the
child instead, so what the ring writes out is what the parent wrote.
"""

PAGE = 4096
NAME = "fork with a pinned io_uring buffer"
NEEDS = ("io_uring",)


def scenario(system):
    parent = system.spawn("app")
    buf = parent.map("anon", PAGE, fill=1)
    parent.uring_register([(buf, 0, PAGE)])     # +1 pin, VmPin 4 kB
    child = parent.fork()                       # the pinned page is copied for the child
    parent.write(buf, 0, b"\xff" * PAGE)        # no COW fault: the parent keeps its page
    parent.uring_write_fixed(0, PAGE)           # the ring writes what the pinned page holds
    parent.read(buf, 0, PAGE)
    child.exit()
    parent.uring_unregister()                   # +1 released


def expect(trace):
    """What the kernel documents: the ring and the parent see the same bytes."""
    fixed = [s for s in trace.steps if s.op.startswith("uring_write_fixed")]
    reads = [s for s in trace.steps if s.op.startswith("read")]
    if not fixed or not reads or fixed[0].data != reads[-1].data:
        return ["the pinned page and the parent's memory differ after fork"]
    return []
