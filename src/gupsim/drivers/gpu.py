"""GPU host memory registration (a generic driver, cudaHostRegister-like), right and wrong.

A GPU driver lets a process register ordinary host memory so that the GPU can read and
write it by DMA for as long as the registration lives: a long-term pin,
`pin_user_pages(FOLL_WRITE | FOLL_LONGTERM)` under mmap_lock, released with
`unpin_user_pages_dirty_lock(..., true)` since the GPU may have written. When not
every page can be pinned (a writable long-term pin of an ext4/xfs shared mapping is
-EFAULT since 6.5, DAX, secretmem, ...) the correct driver releases the pins it got and
fails the registration.

`gpu_host_register_with_fallback()` reproduces a misuse publicly reported against an
out-of-tree GPU driver: when pinning stops short it takes the rest with
`get_user_pages()` (plain FOLL_GET references, +1 each) into the same page list, and
`gpu_host_unregister_all_unpin()` later releases every entry with `unpin_user_page()`,
which takes GUP_PIN_COUNTING_BIAS (1024) off a page that holds one reference: the
refcount underflows and the page, still mapped, is freed. The model's sanitizer reports
each such release as `unpin_of_get`, naming the driver line that took the reference
and the line that released it, before the refcount is touched.

Convention: kernel-side calls return the region or a negative errno (ERR_PTR); the
calling process is the keyword `current`. Simplification: the GPU addresses host
frames directly (no IOMMU, no GPU page tables).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..check.args import check_bytes, check_count, check_ints, check_owner
from ..constants import EFAULT, EINVAL, PAGE_MASK, PAGE_SHIFT, PAGE_SIZE
from ..gup import FOLL_LONGTERM, FOLL_WRITE
from ..memory import PageArray
from .kernel_write import set_page_dirty_lock

if TYPE_CHECKING:
    from ..kernel import Kernel, Process

__gupsim_call_site__ = True     # the sanitizer names this driver's lines (see warn.py)


class GpuDevice:
    """A GPU that can DMA into registered host memory."""

    def __init__(self, kernel: Kernel, name: str = "gpu0") -> None:
        self.k = kernel
        self.name = name
        self.regions: list[HostRegion] = []

    def dma_write(self, region: HostRegion, offset: int, data: bytes) -> None:
        """The GPU writes `data` at `offset` into a registered region."""
        check_ints("dma_write", offset=offset)
        data = check_bytes("dma_write", "data", data)
        for pfn, poff, lo, hi in region.spans(offset, len(data)):
            self.k.dma_write(self.k.page(pfn), poff, data[lo:hi])

    def dma_read(self, region: HostRegion, offset: int, n: int) -> bytes:
        """The GPU reads `n` bytes at `offset` of a registered region."""
        check_ints("dma_read", offset=offset)
        check_count("dma_read", "n", n)
        return b"".join(self.k.dma_read(self.k.page(pfn), poff, hi - lo)
                        for pfn, poff, lo, hi in region.spans(offset, n))


@dataclass(eq=False)
class HostRegion:
    """One registration: its page list, and how many leading entries are FOLL_PIN pins."""

    device: GpuDevice
    addr: int
    size: int
    pages: PageArray
    npinned: int            # entries [0, npinned) are pins
    nget: int = 0           # entries [npinned, npinned + nget) are FOLL_GET references
    released: bool = False

    @property
    def nr_pages(self) -> int:
        """Entries held: the pins, then the FOLL_GET references after them."""
        return self.npinned + self.nget

    def pinned_pfns(self) -> np.ndarray:
        """The frames held with FOLL_PIN (empty once released)."""
        return self.pages.pfns[:0] if self.released else self.pages.pfns[:self.npinned]

    def spans(self, off: int, n: int) -> Iterator[tuple[int, int, int, int]]:
        """(pfn, offset in page, lo, hi) pieces of bytes [off, off+n) of the region."""
        if off < 0 or off + n > self.size:
            raise ValueError(f"GPU access [{off}, {off + n}) outside the {self.size}-byte "
                             "region")
        start = (self.addr & ~PAGE_MASK) + off
        done = 0
        while done < n:
            i, poff = divmod(start + done, PAGE_SIZE)
            take = min(PAGE_SIZE - poff, n - done)
            yield int(self.pages.pfns[i]), poff, done, done + take
            done += take


def _span(addr: int, size: int) -> tuple[int, int]:
    start = addr & PAGE_MASK
    return start, ((addr + size + PAGE_SIZE - 1) >> PAGE_SHIFT) - (start >> PAGE_SHIFT)


def gpu_host_register(dev: GpuDevice, addr: int, size: int, *,
                      current: Process) -> HostRegion | int:
    """Register host memory, the correct way: all pages pinned long-term, or -errno and
    nothing held (a short pin is released and answered with -EFAULT)."""
    check_ints("gpu_host_register", addr=addr, size=size)
    check_owner("gpu_host_register", "current", current, dev.k)
    if size <= 0:
        return -EINVAL
    start, n = _span(addr, size)
    pages = PageArray(n)
    got = current.pin_user_pages(start, n, FOLL_WRITE | FOLL_LONGTERM, pages)
    if got != n:
        if got > 0:
            dev.k.unpin_user_pages(pages, got)
        return got if got < 0 else -EFAULT
    region = HostRegion(dev, addr, size, pages, n)
    dev.regions.append(region)
    return region


def gpu_host_unregister(region: HostRegion) -> None:
    """Release a registration made by gpu_host_register(): unpin, dirtying (the GPU may
    have written)."""
    k = region.device.k
    if k.warnings.warn_on_once(region.released, "gpu_host_unregister: released twice",
                               "the region was already unregistered"):
        return
    k.unpin_user_pages_dirty_lock(region.pages, region.npinned, True)
    region.released = True
    region.device.regions.remove(region)


def gpu_host_register_with_fallback(dev: GpuDevice, addr: int, size: int, *,
                                    current: Process) -> HostRegion | int:
    """THE MISUSE: pin what can be pinned, then take the rest with get_user_pages() into
    the same page list (see the module docstring). Returns the region or -errno."""
    check_ints("gpu_host_register_with_fallback", addr=addr, size=size)
    check_owner("gpu_host_register_with_fallback", "current", current, dev.k)
    if size <= 0:
        return -EINVAL
    start, n = _span(addr, size)
    pages = PageArray(n)
    got = current.pin_user_pages(start, n, FOLL_WRITE | FOLL_LONGTERM, pages)
    npinned = max(got, 0)
    nget = 0
    if npinned < n:
        rest = pages[npinned:]
        assert isinstance(rest, PageArray)
        nget = current.get_user_pages(start + npinned * PAGE_SIZE, n - npinned, FOLL_WRITE,
                                      rest)
        if nget != n - npinned:
            if npinned:
                dev.k.unpin_user_pages(pages, npinned)
            for page in rest.filled(max(nget, 0)):
                dev.k.put_page(page)
            return nget if nget < 0 else -EFAULT
    region = HostRegion(dev, addr, size, pages, npinned, nget)
    dev.regions.append(region)
    return region


def gpu_host_unregister_all_unpin(region: HostRegion) -> None:
    """THE MISUSE, second half: every entry released with unpin_user_page() (through the
    bulk unpin_user_pages(), one unpin_user_page() per entry), FOLL_GET ones included."""
    k = region.device.k
    k.unpin_user_pages(region.pages, region.nr_pages)
    region.released = True
    region.device.regions.remove(region)


def gpu_host_unregister_fixed(region: HostRegion) -> None:
    """What the misusing driver should do if it keeps the fallback: remember which
    entries are references and release those with set_page_dirty_lock() + put_page()."""
    k = region.device.k
    k.unpin_user_pages_dirty_lock(region.pages, region.npinned, True)
    for page in region.pages[region.npinned:region.nr_pages].filled():
        set_page_dirty_lock(page)
        k.put_page(page)
    region.released = True
    region.device.regions.remove(region)
