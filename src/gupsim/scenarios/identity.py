"""Page identity: what backs each page of a range, as both back-ends can say it alike.

The host reads it from /proc/PID/pagemap and /proc/kpageflags, the model from its page
tables and page arrays. Raw frame numbers differ between the two machines, so frames are
compared by identity only: within one observation every distinct frame gets a number in
order of first appearance (1, 2, ...), so "the child maps the very frames its parent
maps" (fork shared them) reads `1 2 | 1 2` and "it got copies" reads `1 2 | 3 4`.

One token per base page:

- `-`   nothing mapped there (never faulted, or zapped);
- `s`   swapped out (a swap entry in the page table);
- `0`   the shared zero page (or the huge zero folio);
- `N`   a frame, numbered as above, with suffixes: `t` part of a large anonymous or
        page-cache folio (a THP or mTHP; kpageflags THP), `h` a hugetlb page
        (kpageflags HUGE), `x` mapped by this page table only (pagemap bit 56,
        PM_MMAP_EXCLUSIVE).

Asked for (`pages(..., soft_dirty=True)`), any token gets a `d` when the page reads
soft-dirty (pagemap bit 55: the VMA's VM_SOFTDIRTY or the entry's bit, see
`mm/soft_dirty.py`); `-d` is an unmapped page of a soft-dirty VMA.

Processes' token lists are joined with ` | `. Identity is not carried from one step to
the next: a frame freed and reallocated between two steps keeps its number on the host
(the page allocator hands hot frames back at once), in a way no model can predict.

PageAnonExclusive itself is not in pagemap or kpageflags, so neither back-end reports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PageSeen:
    """What one page-table entry shows: nothing, a swap entry, or a frame and its kind."""

    state: str = "none"      # "none", "swapped" or "present"
    frame: int = -1          # the frame (a raw PFN; only compared for equality)
    zero: bool = False
    thp: bool = False
    hugetlb: bool = False
    exclusive: bool = False
    soft_dirty: bool = False


NONE = PageSeen()
SWAPPED = PageSeen("swapped")


def encode(groups: Sequence[Sequence[PageSeen]], soft_dirty: bool = False) -> str:
    """The tokens of each process's pages (see the module doc), frames numbered by first
    appearance across all groups; `soft_dirty`: with the `d` suffixes."""
    numbers: dict[int, int] = {}
    out = []
    for pages in groups:
        tokens = []
        for seen in pages:
            if seen.state == "none":
                tokens.append("-")
            elif seen.state == "swapped":
                tokens.append("s")
            elif seen.zero:
                tokens.append("0")
            else:
                n = numbers.setdefault(seen.frame, len(numbers) + 1)
                tokens.append(f"{n}{'t' if seen.thp else ''}{'h' if seen.hugetlb else ''}"
                              f"{'x' if seen.exclusive else ''}")
            if soft_dirty and seen.soft_dirty:
                tokens[-1] += "d"
        out.append(" ".join(tokens))
    return " | ".join(out)
