"""Reclaim-side operations: swap-out (MADV_PAGEOUT), lazy freeing (MADV_FREE), THP split,
MADV_COLLAPSE, compaction, hwpoison.

Each refuses pinned folios the way the kernel does: a folio with references beyond its
mappings (a pin, a GET reference) cannot be split, collapsed or migrated, a
maybe-pinned anon folio is never added to swap, and a lazyfree one is never discarded.
Compaction's migrate scanner does not even isolate an anon folio whose refcount exceeds
its mapcount (a racy pin check).
"""

from __future__ import annotations

import errno
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from ..constants import PAGE_SHIFT, PMD_ORDER
from ..memory import PG, Kind, OutOfMemory
from ..memory.migrate import ReplaceCache, isolate_folio, migrate_folio, putback_folio
from ..memory.page import maybe_dma_pinned_pfns
from .env import MMEnv
from .mm_struct import MM, map_huge, split_pmds_across, zap_range
from .mmu_notifier import MMU_NOTIFY_CLEAR, invalidate_end, invalidate_start
from .rmap import MMRmap, invalidate_folio_end, invalidate_folio_start, split_all_huge_mappings
from .vma import PTE, VM, VMA


def folio_extra_refs(env: MMEnv, head: int) -> int:
    """References beyond those of the folio's mappings (and the page cache's)."""
    mem = env.mem
    n = mem.nr_pages_of(head)
    expected = int(mem.mapcount[head:head + n].sum()) + int(mem.entire_mapcount[head])
    if mem.kind[head] not in (Kind.ANON, Kind.KSM) and mem.mapping[head]:
        expected += n
    return int(mem.refcount[head]) - expected


def split_folio(env: MMEnv, head: int) -> int:
    """split_huge_page(): make order-0 folios of a large anon folio; 0 or -EAGAIN/-EINVAL.

    Refused with -EAGAIN when anything but mappings holds a reference (pins included).
    """
    mem = env.mem
    order = int(mem.order[head])
    if order == 0:
        return 0
    if mem.test(head, PG.hugetlb) or mem.kind[head] != Kind.ANON:
        return -errno.EINVAL
    if folio_extra_refs(env, head) != 0:
        mem.vmstat["thp_split_page_failed"] += 1
        return -errno.EAGAIN
    rngs = invalidate_folio_start(env, head, MMU_NOTIFY_CLEAR)   # unmap_folio()
    split_all_huge_mappings(env, head)
    n = 1 << order
    pfns = np.arange(head, head + n, dtype=np.int64)
    base_index = int(mem.index[head])
    flags = int(mem.flags[head]) & ~int(PG.head) & ~int(PG.anon_exclusive)
    mem.order[head] = 0
    mem.head_off[pfns] = 0
    mem.refcount[pfns] = mem.mapcount[pfns]
    mem.kind[pfns] = mem.kind[head]
    mem.mapping[pfns] = mem.mapping[head]
    mem.index[pfns] = base_index + np.arange(n)
    mem.flags[pfns] = (mem.flags[pfns] & np.uint32(PG.anon_exclusive | PG.hwpoison)) | flags
    mem.pincount[head] = 0
    mem.vmstat["thp_split_page"] += 1
    for pfn in pfns[mem.refcount[pfns] == 0].tolist():
        env.alloc.free_folio(pfn)
    invalidate_folio_end(rngs)
    return 0


def pageout_range(env: MMEnv, mm: MM, vma: VMA, i0: int, i1: int) -> int:
    """MADV_PAGEOUT over entries [i0, i1): swap out anon folios this mm alone maps.

    Simplifications: file pages are only unmapped from this mm (they stay cached), and a
    folio with references beyond its mappings is left alone, as reclaim would fail to
    free it. Lazyfree folios (MADV_FREE) need no swap: see `_reclaim_lazyfree`.
    Returns the number of pages swapped out or discarded.
    """
    mem = env.mem
    if vma.flags & (VM.PFNMAP | VM.IO) or vma.is_hugetlb:
        return 0
    out = 0
    rmap = MMRmap(env)
    i = i0
    while i < i1:
        pte = int(vma.pte[i])
        if not pte & PTE.PRESENT or pte & PTE.SPECIAL:
            i += 1
            continue
        head = int(mem.head_of(int(vma.pfn[i])))
        n = mem.nr_pages_of(head)
        if mem.kind[head] == Kind.ANON and not mem.test(head, PG.swapbacked):
            out += _reclaim_lazyfree(env, mm, vma, i, head)
            i += 1
            continue
        if env.swap is None:
            i += 1
            continue
        if mem.kind[head] != Kind.ANON:
            rng = invalidate_start(mm, MMU_NOTIFY_CLEAR, vma.addr_of(i), vma.addr_of(i + 1))
            zap_range(mm, vma, i, i + 1, env.swap)
            invalidate_end(rng)
            i += 1
            continue
        shared = int(mem.mapcount[head:head + n].max()) > 1 or int(mem.entire_mapcount[head]) > 1
        if shared or maybe_dma_pinned_pfns(mem, np.array([head]))[0]:
            i += 1
            continue
        if n > 1 and split_folio(env, head) != 0:
            i += 1
            continue
        page = int(vma.pfn[i])
        if int(mem.refcount[page]) == int(mem.mapcount[page]) and rmap.try_to_unmap(page):
            if int(mem.refcount[page]) == 0:
                env.alloc.free_folio(page)
            out += 1
            mem.vmstat["pswpout"] += 1
        i += 1
    return out


def _reclaim_lazyfree(env: MMEnv, mm: MM, vma: VMA, i: int, head: int) -> int:
    """Reclaim of the lazyfree folio mapped at entry `i`: 1 if its page was discarded.

    Reclaim drops the contents (the PTE is cleared, the next access sees a fresh zero
    page) only while the folio is clean and nothing but its mappings holds it. Written
    since MADV_FREE (folio or PTE dirty), or held beyond its mappings (a pin, a GET
    reference), it is swap-backed again and stays mapped, as try_to_unmap() restores
    the PTE. Folios mapped more than once are not MADV_PAGEOUT's to reclaim.
    """
    mem = env.mem
    n = mem.nr_pages_of(head)
    if int(mem.mapcount[head:head + n].max()) > 1 or int(mem.entire_mapcount[head]) > 1:
        return 0
    lo = max(0, i - (int(vma.pfn[i]) - head))
    hi = min(vma.nr_pages, lo + n)
    mine = (vma.pfn[lo:hi] >= head) & (vma.pfn[lo:hi] < head + n) & \
        ((vma.pte[lo:hi] & PTE.PRESENT) != 0)
    dirty = mem.test(head, PG.dirty) or bool((vma.pte[lo:hi][mine] & PTE.DIRTY).any())
    if dirty or folio_extra_refs(env, head) != 0:
        mem.set_flag(head, PG.swapbacked)
        return 0
    if n > 1 and split_folio(env, head) != 0:
        return 0
    rng = invalidate_start(mm, MMU_NOTIFY_CLEAR, vma.addr_of(i), vma.addr_of(i + 1))
    zap_range(mm, vma, i, i + 1, env.swap)
    invalidate_end(rng)
    mem.vmstat["pglazyfreed"] += 1
    return 1


def lazyfree_range(env: MMEnv, mm: MM, vma: VMA, i0: int, i1: int) -> int:
    """MADV_FREE over entries [i0, i1) of a private anonymous VMA; returns pages marked.

    The mapping stays: the contents are only declared disposable. Swap entries are
    dropped (nothing will read them), and each anon folio that this mapping alone maps
    is made clean (PTE and folio dirty bits cleared) and lazyfree (PG_swapbacked
    cleared), so reclaim may later discard it instead of swapping it, unless it was
    written again meanwhile or holds references beyond its mappings. A large folio the
    range only partly covers is split first; if it cannot be (pinned), it is left alone.
    """
    mem = env.mem
    if i0 >= i1:
        return 0
    split_pmds_across(mm, vma, i0)
    split_pmds_across(mm, vma, i1)
    pte = vma.pte[i0:i1]
    swapped = np.nonzero(pte & PTE.SWAP)[0] + i0
    if len(swapped):
        if env.swap is not None:
            env.swap.free_entries(vma.pfn[swapped])
        vma.pte[swapped] = 0
        vma.pfn[swapped] = 0
    whole = _large_folios_for_lazyfree(env, vma, i0, i1)
    pte, pfn = vma.pte[i0:i1], vma.pfn[i0:i1]
    idx = np.nonzero(((pte & PTE.PRESENT) != 0) & ((pte & PTE.SPECIAL) == 0))[0]
    heads = mem.head_of(pfn[idx])
    small = (mem.order[heads] == 0) & (mem.kind[heads] == Kind.ANON) & \
        (mem.mapcount[heads] == 1)
    ok = small | np.isin(heads, whole)
    idx, heads = idx[ok], np.unique(heads[ok])
    vma.pte[idx + i0] &= np.uint16(~(PTE.DIRTY | PTE.YOUNG) & 0xFFFF)
    mem.flags[heads] &= np.uint32(~int(PG.dirty) & 0xFFFFFFFF)
    flags = mem.flags[heads]
    lazy = heads[((flags & np.uint32(PG.swapbacked)) != 0)
                 & ((flags & np.uint32(PG.unevictable)) == 0)]
    mem.flags[lazy] &= np.uint32(~int(PG.swapbacked | PG.active | PG.referenced) & 0xFFFFFFFF)
    marked = int((np.int64(1) << mem.order[lazy].astype(np.int64)).sum())
    mem.vmstat["pglazyfree"] += marked
    return marked


def _large_folios_for_lazyfree(env: MMEnv, vma: VMA, i0: int, i1: int) -> np.ndarray:
    """Heads of the large anon folios in [i0, i1) that MADV_FREE may mark whole.

    Only folios mapped once qualify; those the range covers whole are kept, the others
    are split (split_folio() refuses a pinned one, which then stays large and unmarked).
    """
    mem = env.mem
    pte, pfn = vma.pte[i0:i1], vma.pfn[i0:i1]
    present = ((pte & PTE.PRESENT) != 0) & ((pte & PTE.SPECIAL) == 0)
    heads = np.unique(mem.head_of(pfn[present]))
    large = heads[(mem.order[heads] > 0) & (mem.kind[heads] == Kind.ANON)]
    whole: list[int] = []
    for h in large.tolist():
        n = mem.nr_pages_of(h)
        covered = int(np.count_nonzero(present & (pfn >= h) & (pfn < h + n)))
        if int(mem.mapcount[h:h + n].max()) > 1 or int(mem.entire_mapcount[h]) > 1:
            continue
        if covered == n:
            whole.append(h)
        else:
            split_folio(env, h)
    return np.array(whole, dtype=np.int64)


def collapse_range(env: MMEnv, mm: MM, start: int, end: int) -> int:
    """MADV_COLLAPSE: copy each PMD-aligned, fully covered anon range into a new THP.

    Returns 0, or the errno of the first range that could not be collapsed: EAGAIN
    when a page has references beyond its mappings (pinned), ENOMEM without memory,
    EINVAL when the range is not suitable.
    """
    mem = env.mem
    pmd = 1 << (PMD_ORDER + PAGE_SHIFT)
    addr = -(-start // pmd) * pmd
    done = False
    while addr + pmd <= end:
        vma = mm.find_vma(addr)
        if vma is None or addr + pmd > vma.end or not vma.is_anonymous or vma.is_hugetlb \
                or vma.flags & VM.NOHUGEPAGE:
            return errno.EINVAL
        i0 = vma.idx(addr)
        pte = vma.pte[i0:i0 + (1 << PMD_ORDER)]
        if (pte & PTE.PMD).all():
            addr += pmd
            done = True
            continue
        if (pte & (PTE.SWAP | PTE.HWPOISON | PTE.MARKER)).any():
            return errno.EINVAL
        present = (pte & PTE.PRESENT) != 0
        pfns = vma.pfn[i0:i0 + (1 << PMD_ORDER)]
        real = present & ((pte & PTE.SPECIAL) == 0)
        heads = np.unique(mem.head_of(pfns[real]))
        for h in heads.tolist():
            if folio_extra_refs(env, h) != 0:
                return errno.EAGAIN
        try:
            new = env.alloc.alloc_folio(PMD_ORDER, Kind.ANON, movable=env.movable_alloc,
                                        mapping=vma.anon_id, index=vma.pgoff + i0)
        except OutOfMemory:
            return errno.ENOMEM
        for j in np.nonzero(real)[0].tolist():
            mem.copy_frames(new + j, int(pfns[j]), 1)
        rng = invalidate_start(mm, MMU_NOTIFY_CLEAR, addr, addr + pmd)
        zap_range(mm, vma, i0, i0 + (1 << PMD_ORDER), env.swap)
        bits = PTE.YOUNG | PTE.DIRTY | (PTE.WRITE if vma.flags & VM.WRITE else 0)
        map_huge(mm, vma, i0, new, PMD_ORDER, bits)
        invalidate_end(rng)
        mem.set_flag(new, PG.anon_exclusive | PG.swapbacked | PG.lru)
        mem.refcount[new] -= 1
        mem.vmstat["thp_collapse_alloc"] += 1
        addr += pmd
        done = True
    return 0 if done else errno.EINVAL


def poison_page(env: MMEnv, mm: MM, vma: VMA, i: int) -> None:
    """MADV_HWPOISON: mark the page poisoned and replace its mapping by a hwpoison entry.

    The poisoned frame keeps one reference so it is never handed out again.
    """
    mem = env.mem
    pte = int(vma.pte[i])
    if not pte & PTE.PRESENT or pte & PTE.SPECIAL:
        return
    pfn = int(vma.pfn[i])
    head = int(mem.head_of(pfn))
    mem.set_flag(pfn, PG.hwpoison)
    mem.refcount[head] += 1
    rng = invalidate_start(mm, MMU_NOTIFY_CLEAR, vma.addr_of(i), vma.addr_of(i + 1))
    zap_range(mm, vma, i, i + 1, env.swap)
    vma.pte[i] = PTE.HWPOISON
    vma.pfn[i] = pfn
    invalidate_end(rng)


# -- compaction ------------------------------------------------------------------------------


def page_cache_replacer(env: MMEnv, files: Iterable[object] = ()) -> ReplaceCache:
    """What migration calls to swap a page-cache folio in its file's cache, on an
    environment without file systems' own hook (`env.replace_cache`, which a `Kernel`
    installs: fs/ `Inode.migrate_folio()`).

    The inode is found through `files` (a memfd being pinned) or the files of the VMAs
    that map it, so unmapped page cache cannot move with this fallback; the cache entry
    is replaced if it still holds the old folio (folio_migrate_mapping()).
    """
    mem = env.mem
    extra = list(files)

    def find_cache(mapping: int) -> dict[int, int] | None:
        candidates = extra + [v.file for m in env.mms for v in m.vmas if v.file is not None]
        for f in candidates:
            if getattr(f, "inode_id", None) == mapping:
                cache = getattr(getattr(f, "inode", None), "cache", None)
                if isinstance(cache, dict):
                    return cache
        return None

    def replace(old: int, new: int) -> bool:
        cache = find_cache(int(mem.mapping[old]))
        index = int(mem.index[old])
        if cache is None or cache.get(index) != old:
            return False
        cache[index] = new
        return True

    return replace


@dataclass
class CompactResult:
    """What one pass of compaction's migrate scanner did over a PFN range."""

    migrated: int = 0                                       # pages moved out of the range
    skipped: dict[int, str] = field(default_factory=dict)   # head -> why not isolated
    failed: dict[int, str] = field(default_factory=dict)    # head -> why migration failed

    @property
    def rc(self) -> int:
        """alloc_contig_range()'s answer: 0 if the range is now free of in-use folios."""
        return -errno.EBUSY if self.skipped or self.failed else 0


def compact_range(env: MMEnv, start_pfn: int, end_pfn: int,
                  replace_cache: ReplaceCache | None = None) -> CompactResult:
    """Move every in-use movable folio of [start_pfn, end_pfn) to movable memory elsewhere.

    The migrate-scanner half of compaction, and what alloc_contig_range() (CMA
    allocation), memory offlining and the like do to a range: isolate each folio
    (anon folios with more references than mappings are not even tried: pinned, or
    held by GUP), migrate it synchronously, put back what failed. Pinned folios stay
    where they are, and the range stays busy (`rc == -EBUSY`).
    """
    mem = env.mem
    replace = replace_cache or env.replace_cache or page_cache_replacer(env)
    pfns = np.arange(max(start_pfn, 0), min(end_pfn, mem.nr_pages), dtype=np.int64)
    heads = pfns[(mem.head_off[pfns] == 0) & (mem.kind[pfns] != Kind.FREE)]
    res = CompactResult()
    mem.vmstat["compact_migrate_scanned"] += len(pfns)
    for h in heads.tolist():
        kind = int(mem.kind[h])
        maps = int(mem.mapcount[h:h + mem.nr_pages_of(h)].sum()) + int(mem.entire_mapcount[h])
        if kind in (Kind.ANON, Kind.KSM) and int(mem.refcount[h]) > maps:
            res.skipped[h] = "anon folio with references beyond its mappings (pinned?)"
            continue
        if not isolate_folio(mem, h):
            res.skipped[h] = "not on the LRU (not movable)"
            continue
        n = mem.nr_pages_of(h)
        mem.vmstat["compact_isolated"] += n
        out = migrate_folio(env.alloc, h, replace, isolated=True, movable_target=True,
                            avoid=(start_pfn, end_pfn))
        if out.rc:
            putback_folio(env.alloc, h)
            res.failed[h] = out.reason
        else:
            res.migrated += n
    mem.vmstat["compact_fail" if res.rc else "compact_success"] += 1
    return res
