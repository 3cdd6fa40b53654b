"""Read faults map the cached pages around them (do_fault_around), and fork() leaves to
the child's faults what they can refill (vma_needs_copy): both decide whether a page
is mapped once or twice, which pagemap's exclusive bit shows (gupsim fuzz found both)."""

from __future__ import annotations

from gupsim import (
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    MAP_SHARED,
    PAGE_SIZE,
    PROT_READ,
    PROT_WRITE,
    Kernel,
    Process,
)

P = PAGE_SIZE


def mapped(p: Process, addr: int, n: int) -> list[bool]:
    vma = p.mm.find_vma(addr)
    return [bool(vma.pte[vma.idx(addr + k * P)] & 1) for k in range(n)]


def test_a_read_fault_maps_the_cached_pages_of_its_window(k: Kernel, p: Process) -> None:
    f = p.memfd_create("around")
    f.truncate(40 * P)
    a = p.mmap(0, 40 * P, PROT_READ | PROT_WRITE, MAP_SHARED, fd=f)
    # the 16-entry window of page 3: aligned in the page table, moved up to start at
    # the VMA if that cuts it (do_fault_around's from_pte)
    first = max(3 - ((a >> 12) + 3) % 16, 0)
    inside = [pg for pg in (first + 1, first + 10) if pg != 3]
    outside = first + 16
    for page in inside + [outside]:          # cached and mapped by another mapping
        b = p.mmap(0, P, PROT_READ, MAP_SHARED, fd=f, offset=page * P)
        p.read(b, 1)
    p.read(a + 3 * P, 1)
    got = mapped(p, a, 40)
    assert inside and [pg for pg in range(40) if got[pg]] == sorted(inside + [3])


def test_fork_leaves_a_read_only_private_file_mapping_to_the_childs_faults(
        k: Kernel, p: Process) -> None:
    f = p.memfd_create("lazy")
    f.truncate(2 * P)
    a = p.mmap(0, 2 * P, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd=f)
    p.read(a, 1)
    p.read(a + P, 1)
    child = p.fork()
    assert mapped(child, a, 2) == [False, False]     # no anon_vma: nothing copied
    p.write(a, b"x")                                 # an anonymous copy now
    second = p.fork()
    assert mapped(second, a, 2) == [True, True]      # copied, page cache entry too
    assert child.read(a, 1) == b"\0" and second.read(a, 1) == b"x"


def test_fork_leaves_zero_page_only_anonymous_memory_to_the_childs_faults(
        k: Kernel, p: Process) -> None:
    a = p.mmap(0, 2 * P, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
    p.read(a, 1)                                     # the zero page: no anon_vma
    assert mapped(p, a, 2) == [True, False]
    assert mapped(p.fork(), a, 2) == [False, False]
    p.write(a + P, b"w")
    assert mapped(p.fork(), a, 2) == [True, True]
