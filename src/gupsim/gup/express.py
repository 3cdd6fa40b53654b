"""The one-page GUP-fast call in plain ints: `p.pin_user_pages_fast(addr, 1, flags, vec)`.

A driver pinning one page at a time (gup_test -n 1, a 4 KiB io_uring buffer) goes
through about 150 Python calls on the general path: argument binding, the walk over
PFN arrays, folio runs, the pages-array writer, the call record. The kernel's
gup_fast_fallback() for one page is a PTE read, the folio tests and one atomic; this
module is that, for the common case only: one present PTE that passes every GUP-fast
test, on a machine of the newest era, with no race hook waiting. Anything else (a
refusal, an unusual flag, a NULL or overflowed refcount, a list as pages) answers None
before changing anything, and the caller takes the general path, which decides and
warns. The result is the general path's, state for state: `tests/gup/test_lean_paths.py`
runs random programs with it (`lean.ENABLED`) and without and compares the machines.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .. import lean
from ..constants import PAGE_SHIFT, PAGE_SIZE, TASK_SIZE
from ..eras import NEWEST_ERA
from ..memory import GUP_PIN_COUNTING_BIAS, PG, Kind, PageArray
from ..mm import MMF, VM
from ..mm.vma import PTE
from ..observe import gup_call_ended
from .fast import folio_allowed_one
from .flags import FOLL_GET, FOLL_LONGTERM, FOLL_PIN, FOLL_WRITE, is_valid_gup_args
from .grab import ACQUIRED
from .longterm import longterm_pinnable_one
from .state import PATH_FAST, GupCall, _state_of

if TYPE_CHECKING:
    from .entry import EntryPoint

_VM_ACCESS = int(VM.READ | VM.WRITE | VM.EXEC)
_HAS_PINNED = int(MMF.HAS_PINNED)
_PRESENT, _SPECIAL, _WRITE = int(PTE.PRESENT), int(PTE.SPECIAL), int(PTE.WRITE)
_LEAF = int(PTE.PMD | PTE.PUD)
_REFERENCED = np.uint32(PG.referenced)
_ZERO, _HUGE_ZERO = int(Kind.ZERO), int(Kind.HUGE_ZERO)
# the caller's flags the express path takes; anything else goes the general way
_CALLER_FLAGS = FOLL_WRITE | FOLL_LONGTERM
_NEWEST = NEWEST_ERA.version        # the era whose rules the checks below follow
_NO_WRAP = (1 << 31) - GUP_PIN_COUNTING_BIAS   # counts below this take a pin without wrapping


def gup_fast_one(ep: EntryPoint, proc: Any, start: object, nr_pages: object,
                 gup_flags: object, pages: object) -> int | None:
    """`ep` (a GUP-fast entry point) of one page for process `proc`: 1 when the page was
    taken here, None when the general path must decide (nothing was changed)."""
    if (nr_pages != 1 or type(start) is not int or type(gup_flags) is not int
            or type(pages) is not PageArray or not len(pages) or gup_flags & ~_CALLER_FLAGS
            or not lean.ENABLED or not 0 <= start < TASK_SIZE - PAGE_SIZE):
        return None
    mm = proc.mm
    mem = mm.mem
    st = _state_of(mem)
    if st is None or mem.era.version != _NEWEST or mm.write_protect_seq & 1 \
            or any(st.race_hooks.values()):
        return None
    vma = mm.find_vma(start)
    if vma is None or start < vma.start or not int(vma.flags) & _VM_ACCESS:
        return None
    i = (start - vma.start) >> PAGE_SHIFT
    pte = int(vma.pte[i])
    write, longterm = gup_flags & FOLL_WRITE, gup_flags & FOLL_LONGTERM
    pin = ep.adds & FOLL_PIN
    if not pte & _PRESENT or pte & _SPECIAL or write and not pte & _WRITE \
            or not pin and longterm or pin and not write and not pte & _WRITE:
        return None             # refused, invalid, or a read pin that may need unsharing
    pfn = int(vma.pfn[i])
    head = pfn - int(mem.head_off[pfn])
    kind = int(mem.kind[head])
    rc = int(mem.refcount[head])
    large = int(mem.order[head]) > 0
    if kind in (_ZERO, _HUGE_ZERO) or not 0 < rc < _NO_WRAP \
            or large and int(mem.pincount[head]) >= _NO_WRAP \
            or longterm and not longterm_pinnable_one(mem, head, kind) \
            or not folio_allowed_one(mem, head, kind, bool(pin and write and longterm)):
        return None
    flags = is_valid_gup_args(mem.warnings, pages, None, gup_flags | ep.implies, ep.adds)
    if flags is None:
        return None
    # taken: what gup_fast_fallback(), gup_fast() and gup_call() do for this page
    if pin and not int(mm.flags) & _HAS_PINNED:
        mm.flags |= MMF.HAS_PINNED
    # grab.py's _add_refs_one() as the newest era has it, with no wrap possible
    if not pin:
        mem.refcount[head] = rc + 1
    elif large:                         # an exact _pincount, and one reference per pin
        mem.refcount[head] = rc + 1
        mem.pincount[head] += 1
    else:
        mem.refcount[head] = rc + GUP_PIN_COUNTING_BIAS
    if pin:
        mem.vmstat[ACQUIRED] += 1
    pages.mem = mem
    pages.pfns[0] = pfn
    mem.flags[head] |= _REFERENCED
    st.calls.append(GupCall(ep.name, start, 1, flags, PATH_FAST, fast=1, ret=1))
    if st.sanitizer is not None:
        got = flags if flags & FOLL_PIN else flags | FOLL_GET
        st.sanitizer.on_acquire_one(pfn, head, got, ep.name, mm)
    gup_call_ended(mem)
    return 1
