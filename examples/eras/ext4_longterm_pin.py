"""A writable long-term pin of an ext4 shared mapping: refused from 6.5, accepted before.

Run it on every era:   gupsim eras examples/eras/ext4_longterm_pin.py

io_uring registers a MAP_SHARED mapping of an ext4 file as a fixed buffer (FOLL_WRITE |
FOLL_LONGTERM). Before 6.5 the pin is accepted: the device can then write the page
behind page_mkwrite()'s back while writeback cleans it, so a later reclaim drops what
the device wrote (the model shows that loss step by step in
tests/test_eras_behaviour.py). From 6.5 check_vma_flags() and GUP-fast refuse the pin
with EFAULT ("mm/gup: disallow FOLL_LONGTERM GUP-[non]fast writing to file-backed
mappings").
"""

PAGE = 4096
NAME = "io_uring fixed buffer in an ext4 MAP_SHARED mapping"
NEEDS = ("io_uring",)


def scenario(system):
    app = system.spawn("app")
    buf = app.map("file", PAGE, shared=True, fill=0x41)
    app.uring_register([(buf, 0, PAGE)])
    app.uring_unregister()


def expect(trace):
    """What the kernel does since 6.5: the registration fails with EFAULT."""
    reg = [s for s in trace.steps if s.op.startswith("uring_register")]
    if not reg or reg[0].outcome != "EFAULT":
        return ["a writable long-term pin of a dirty-tracked file mapping was accepted"]
    return []
