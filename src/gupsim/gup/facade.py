"""The pinning calls of the `Kernel` and `Process` facade (mixins for kernel.py).

`ProcessPinning` gives a process the GUP calls a driver makes on behalf of `current`
(the process): `p.pin_user_pages_fast(...)`. Calls whose kernel contract says the
caller holds mmap_lock (`get_user_pages`, `pin_user_pages`, `*_remote`) take it, as
the driver would around the call. `KernelPinning` gives the machine the remote calls,
the release calls, device access to pinned frames, and the sanitizer. The GUP methods
of both are built from the table of entry points (`gup/entry.py`), once per row: the
process gets the rows that run on current->mm, the machine the remote ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import MethodType
from typing import TYPE_CHECKING, Any

from ..check.args import check_bytes, check_count, check_flag, check_int, check_page, check_pages
from ..check.sanitizer import PinSanitizer
from ..constants import EFAULT, PAGE_SIZE
from ..memory import Folio, Kind, Page, PageArray
from ..mm import MM
from . import api
from .accounting import account_locked_vm
from .entry import ENTRY_POINTS, kernel_method, process_method
from .state import GupState, register_machine

if TYPE_CHECKING:
    from ..memory import MemMap
    from ..mm import Cred, MMEnv


if TYPE_CHECKING:      # the built entry points, as a type checker sees them (generated)
    from ._entry_stubs import KernelEntryPoints, ProcessEntryPoints
else:
    KernelEntryPoints = ProcessEntryPoints = object


class ProcessPinning(ProcessEntryPoints):
    """GUP calls made with this process as `current` (see module docstring)."""

    kernel: Any
    mm: MM

    def account_locked_vm(self, pages: int, inc: bool) -> int:
        """account_locked_vm(current->mm, pages, inc) with this process's limits."""
        check_count("account_locked_vm", "pages", pages)
        check_flag("account_locked_vm", "inc", inc)
        return account_locked_vm(self.mm, pages, inc, self.cred)  # type: ignore[attr-defined]


class KernelPinning(KernelEntryPoints):
    """Machine-wide pinning calls: remote GUP, release, device access, the sanitizer."""

    env: MMEnv
    mem: MemMap
    sanitizer: PinSanitizer

    def _init_pinning(self) -> None:
        st = register_machine(self.env)
        self.sanitizer = PinSanitizer(self.mem)
        st.sanitizer = self.sanitizer

    @property
    def gup(self) -> GupState:
        """Pinning-layer state: the path each GUP call took (`k.gup.last_call`,
        `k.gup.calls`), race points (`k.gup.on_race(...)`), the last migration failure."""
        return register_machine(self.env)

    # -- GUP: the *_remote entry points are added below, from the table ------------------

    def memfd_pin_folios(self, memfd: Any, start: int, end: int, folios: list[Folio | None],
                         max_folios: int, offset: list[int]) -> int:
        """memfd_pin_folios(): long-term pin the folios of a memfd covering [start, end]."""
        return api.memfd_pin_folios(memfd, start, end, folios, max_folios, offset,
                                    machine=self.mem)

    # -- release: each checks its arguments (check/args.py), pages of this machine only --

    def unpin_user_page(self, page: Page) -> None:
        """unpin_user_page(): release one pin of the page's folio."""
        api.unpin_user_page(page, machine=self.mem)

    def unpin_user_pages(self, pages: Sequence[Page | None] | PageArray,
                         npages: int | None = None) -> None:
        """unpin_user_pages(): release one pin per entry (NULLs skipped)."""
        api.unpin_user_pages(pages, npages, machine=self.mem)

    def unpin_user_pages_dirty_lock(self, pages: Sequence[Page | None] | PageArray,
                                    npages: int | bool,
                                    make_dirty: bool | None = None) -> None:
        """(pages, npages, make_dirty) as the kernel; (pages, make_dirty) for a whole list."""
        if make_dirty is None:
            if not isinstance(npages, bool):
                raise TypeError("unpin_user_pages_dirty_lock(): make_dirty is missing: call "
                                "(pages, npages, make_dirty), or (pages, make_dirty) for "
                                "the whole array")
            if not isinstance(pages, list | tuple | PageArray):
                check_pages("unpin_user_pages_dirty_lock", "pages", pages, None, self.mem)
            api.unpin_user_pages_dirty_lock(pages, len(pages), npages, machine=self.mem)
            return
        api.unpin_user_pages_dirty_lock(pages, npages, make_dirty, machine=self.mem)

    def unpin_user_page_range_dirty_lock(self, page: Page, npages: int,
                                         make_dirty: bool) -> None:
        """unpin_user_page_range_dirty_lock(): dirty (if asked), then unpin the contiguous
        pages page .. page+npages-1."""
        api.unpin_user_page_range_dirty_lock(page, npages, make_dirty, machine=self.mem)

    def unpin_folio(self, folio: Folio) -> None:
        """unpin_folio(): release one pin of a folio from memfd_pin_folios()."""
        api.unpin_folio(folio, machine=self.mem)

    def unpin_folios(self, folios: Sequence[Folio | None], nfolios: int | None = None) -> None:
        """unpin_folios(): release one pin per folio (NULLs skipped)."""
        api.unpin_folios(folios, nfolios, machine=self.mem)

    def unpin_user_folio(self, folio: Folio, npages: int) -> None:
        """unpin_user_folio(): drop `npages` pins of one folio."""
        api.unpin_user_folio(folio, npages, machine=self.mem)

    def folio_add_pin(self, folio: Folio) -> None:
        """folio_add_pin(): one more pin on a folio already pinned."""
        api.folio_add_pin(folio, machine=self.mem)

    def folio_add_pins(self, folio: Folio, pins: int) -> int:
        """folio_add_pins(): `pins` more pins on a pinned folio; 0 or -errno."""
        return api.folio_add_pins(folio, pins, machine=self.mem)

    def put_page(self, page: Page) -> None:
        """put_page(): drop one ordinary reference (the release for FOLL_GET)."""
        api.put_page(page, machine=self.mem)

    def get_page(self, page: Page) -> None:
        """get_page(): take one ordinary reference on the page's folio."""
        api.get_page(page, machine=self.mem)

    # seed-era names
    def put_user_page(self, page: Page) -> None:
        """put_user_page(page): the v5.2 - v5.6 name of unpin_user_page()."""
        api.unpin_user_page(page, machine=self.mem)

    def put_user_pages(self, pages: Sequence[Page | None] | PageArray,
                       npages: int | None = None) -> None:
        """put_user_pages(): the v5.2 - v5.6 name of unpin_user_pages()."""
        api.unpin_user_pages(pages, npages, machine=self.mem)

    def put_user_pages_dirty_lock(self, pages: Sequence[Page | None] | PageArray, npages: int,
                                  make_dirty: bool) -> None:
        """put_user_pages_dirty_lock(): the v5.2 - v5.6 name."""
        api.unpin_user_pages_dirty_lock(pages, npages, make_dirty, machine=self.mem)

    # -- a device using the frames it was given -------------------------------------------

    def _dma_check(self, call: str, page: Page, offset: int, n: int) -> None:
        check_page(call, "page", page, self.mem)
        check_int(call, "offset", offset)
        if offset < 0 or n < 0 or offset + n > PAGE_SIZE:
            raise ValueError(f"{call}(): DMA of {n} bytes at offset {offset} crosses the "
                             "page: split it")
        kind = int(self.mem.kind[int(self.mem.head_of(page.pfn))])
        if kind == Kind.SECRETMEM:
            raise OSError(EFAULT, "secretmem pages are not in the kernel's direct map")
        self.mem.warnings.warn_on_once(kind == Kind.FREE, "dma: access to a free frame",
                                       f"pfn {page.pfn:#x} was freed: the device holds no "
                                       "reference to it (use after unpin)")

    def dma_write(self, page: Page, offset: int, data: bytes) -> None:
        """A device writes into the frame (no page tables, no dirty tracking)."""
        data = check_bytes("dma_write", "data", data)
        self._dma_check("dma_write", page, offset, len(data))
        self.mem.write(page.pfn, offset, data)

    def dma_read(self, page: Page, offset: int, n: int) -> bytes:
        """A device reads from the frame."""
        self._dma_check("dma_read", page, offset, check_int("dma_read", "n", n))
        return self.mem.read(page.pfn, offset, n)

    def account_locked_vm(self, mm: MM, pages: int, inc: bool, cred: Cred) -> int:
        """account_locked_vm() for an mm and credentials the caller names (a driver
        charging another process)."""
        return account_locked_vm(mm, pages, inc, cred)


class EraGated:
    """A method that did not exist before an era switch (`gupsim.eras`): on an older
    machine reading the attribute raises AttributeError saying when it appeared."""

    def __init__(self, fn: Callable[..., Any], switch: str, name: str) -> None:
        self.fn = fn
        self.switch = switch
        self.name = name
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self.fn
        env = obj.env if isinstance(obj, KernelPinning) else obj.kernel.env
        if not env.era.has(self.switch):
            why = env.era.absent(self.switch, f"{self.fn.__name__}()")
            raise AttributeError(f"{type(obj).__name__!r} object has no attribute "
                                 f"{self.fn.__name__!r}: {why}")
        # a machine's era is fixed when it is made: the answer is kept on the object,
        # whose own attribute is then found first (this is not a data descriptor)
        bound = obj.__dict__[self.name] = MethodType(self.fn, obj)
        return bound


def _install(cls: type, name: str, fn: Callable[..., Any], since: str | None) -> None:
    setattr(cls, name, fn if since is None else EraGated(fn, since, name))


# The GUP entry points, one method per row of the table: a remote variant (it names its
# mm) belongs to the machine, the others to the process that is current.
for _ep in ENTRY_POINTS:
    if _ep.takes_mm:
        _install(KernelPinning, _ep.name, kernel_method(_ep), _ep.since)
    else:
        _install(ProcessPinning, _ep.name, process_method(_ep), _ep.since)
for _name in ("memfd_pin_folios", "unpin_folio", "unpin_folios"):
    _install(KernelPinning, _name, vars(KernelPinning)[_name], "memfd-pin-folios")
