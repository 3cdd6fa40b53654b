"""A writable long-term pin of an ext4 shared mapping: refused from 6.5, accepted before.

Run it on every era:   gupsim eras examples/eras/ext4_longterm_pin.py

io_uring registers a MAP_SHARED mapping of an ext4 file as a fixed buffer (FOLL_WRITE |
FOLL_LONGTERM). Before 6.5 the pin is accepted: the device can then write the page
behind page_mkwrite()'s back while writeback cleans it, so a later reclaim drops what
the device wrote (the model shows that loss step by step in
tests/test_eras_behaviour.py). If the driver dirties the page at unpin after reclaim
stripped its buffers, ext4 writeback of those kernels hit a BUG on the page without
buffers; from cc5095747edf "ext4: don't BUG if someone dirty pages without asking ext4
first" (2022, backported to 5.10 stable) ext4_writepage() and
mpage_prepare_extent_to_map() warn "page ... does not have buffers attached" and clear
the dirty bit: the data is lost either way (buffer heads are not modelled). From 6.5
check_vma_flags() and GUP-fast refuse the pin with EFAULT ("mm/gup: disallow
FOLL_LONGTERM GUP-[non]fast writing to file-backed mappings").
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
