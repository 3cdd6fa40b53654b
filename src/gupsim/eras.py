"""Kernel eras: every modelled change of pinning behaviour, as one table of named switches.

`SWITCHES` is the table: each `Switch` names one behaviour, the first release that has
it, and the title of the upstream commit that changed it (facts from
`/work/shared/reference/eras.md`, checked against upstream). `KERNEL_VERSIONS` is
derived from it: every release at which a modelled behaviour changed, oldest first.
`Era(version)` is one profile; code asks `era.has("zero-page-not-pin-counted")` where
the behaviour lives, never compares versions itself. `gupsim.Kernel(version="6.3")`
builds a machine of that era (`k.version`, `k.era`, `k.env.era`); `gupsim eras` prints
the table. This module is the lowest layer: it imports nothing from gupsim.

Wired (consulted where the behaviour lives, tested on both sides of the version in
tests/test_eras.py and tests/test_eras_behaviour.py):

- `foll-pin` (5.6): the pin_user_pages*() entry points are absent before it (an
  AttributeError saying when they appeared); so are the seed-era pin_longterm_pages*().
- `pin-counting-bias` (5.7): in 5.6 a pin is one plain reference and unpin a put_page()
  (gup/grab.py); folio_maybe_dma_pinned() is false (memory/page.py).
- `nr-foll-pin-vmstat` (5.7): `nr_foll_pin_acquired` / `_released` absent from vmstat
  (`vmstat.count(name)` reads 0 for code that compares eras).
- `gup-forced-cow-break` (5.8 only): GUP with FOLL_GET/FOLL_PIN in a writable COW
  mapping walks and faults as a write; GUP-fast takes only writable entries (gup/slow.py
  `forced_cow_flags`, gup/fast.py).
- `cow-reuse-page-count` (5.9): before it a write fault reuses an anonymous page mapped
  once whatever its refcount; 5.9 - 5.18 only when page_count() == 1 (mm/fault.py
  `_wp_can_reuse_anon`).
- `fork-copies-pinned-anon` (5.9), `fork-copies-pinned-hugetlb` (5.12): before them
  fork shares pinned pages copy-on-write (mm/fork.py `folio_needs_cow_for_dma`).
- `gup-fast-write-protect-seq` (5.11): before it GUP-fast ignores write_protect_seq, so
  a pin taken between fork's pinned check and its write-protect (race point
  "fork:before_wrprotect") leaves a pinned page shared with the child (gup/fast.py);
  from it the pin falls back to the slow path, which waits for fork's mmap_lock
  (examples/eras/gup_fast_fork_race.py, through the protocol's `on_race`).
- `longterm-migrate-cma` (5.1): FOLL_LONGTERM pins migrate pages out of CMA
  (gup/longterm.py `longterm_pinnable`). It is on in EVERY modelled profile: the issue
  asks for eras from v5.6, and this change is older (the 5.1 profile exists only because
  of it, and has no pin_user_pages*() yet), so no profile shows the behaviour before it.
  The tests show CMA migration on 5.6, the oldest profile that can take a long-term pin.
- `longterm-migrate-movable` (5.13): before it ZONE_MOVABLE pages are long-term
  pinnable where they are (gup/longterm.py `longterm_pinnable`).
- `anon-exclusive-unshare` (5.19): before it a R/O pin never unshares, and write-fault
  reuse does not consult PG_anon_exclusive (gup/slow.py `gup_must_unshare`, mm/fault.py).
- `foll-force-no-foll-cow` (6.0): before it a FOLL_FORCE write fault in a R/O private
  mapping sets FOLL_COW for the retry, which then takes any dirty R/O entry; from it
  only an exclusive anonymous page (gup/slow.py `follow_range`, `FOLL_COW`; race point
  "gup_slow:after_fault"). CVE-2022-2590: examples/eras/dirty_cow_shmem.py.
- `reliable-ro-longterm` (6.2): before it a R/O long-term pin of a non-anonymous page
  (the zero page, page cache) in a COW mapping takes the page as is.
- `is-valid-gup-args` (6.3): before it every entry point answers -EINVAL to invalid
  flags (the slow-path pin_user_pages*() warned and returned -EINVAL on FOLL_GET);
  from it the slow-path pin_user_pages*() answer 0. Which flag combinations count as
  invalid is today's set in every era (the older per-entry checks are not modelled).
- `longterm-file-write-refused` (6.5): before it writable long-term pins of
  dirty-tracked file mappings (ext4) are accepted, slow path and fast.
- `zero-page-not-pin-counted` (6.5): before it a pin of the shared zero page is counted
  like any other (GUP_PIN_COUNTING_BIAS, nr_foll_pin_*), and unpin releases it.
- `memfd-pin-folios` (6.11): memfd_pin_folios(), unpin_folio(), unpin_folios() absent
  before it.
- `huge-zero-wp-thp` (6.13): a write fault on the huge zero page maps a new THP; before,
  the PMD is split and one small page copied (mm/fault.py `_huge_zero_wp_thp`).
- `mremap-move-multiple-vmas` (6.17): a pure move may span several VMAs
  (mm/syscalls.py `_remap_move`); before, a range over more than one VMA is EFAULT.

`WIRED` lists the wired names (today every switch); `gupsim eras` marks them.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Switch:
    """One behaviour that changed: on from `first_version` (and off again from
    `removed_in`, for the few that upstream reverted)."""

    name: str
    first_version: str
    commit_title: str
    behaviour: str
    removed_in: str | None = None


SWITCHES: tuple[Switch, ...] = (
    Switch("longterm-migrate-cma", "5.1",
           "mm: update get_user_pages_longterm to migrate pages allocated from CMA region",
           "FOLL_LONGTERM pins migrate pages out of CMA first. On in every modelled "
           "profile: 5.1 is the oldest profile (the issue asks from 5.6)."),
    Switch("foll-pin", "5.6", "mm/gup: introduce pin_user_pages*() and FOLL_PIN",
           "pin_user_pages*() and FOLL_PIN exist, as a placeholder: a pin is a plain "
           "reference, unpin_user_page() is put_page()."),
    Switch("pin-counting-bias", "5.7", "mm/gup: track FOLL_PIN pages",
           "A pin adds GUP_PIN_COUNTING_BIAS (1024); page_maybe_dma_pinned(); compound "
           "pages keep an exact pin count (\"mm/gup: page->hpage_pinned_refcount: exact "
           "pin counts for huge pages\")."),
    Switch("nr-foll-pin-vmstat", "5.7",
           "mm/gup: /proc/vmstat: pin_user_pages (FOLL_PIN) reporting",
           "/proc/vmstat has nr_foll_pin_acquired and nr_foll_pin_released."),
    Switch("gup-forced-cow-break", "5.8",
           "gup: document and work around \"COW can break either way\" issue",
           "GUP with FOLL_GET/FOLL_PIN in a COW mapping breaks COW as if writing; GUP-fast "
           "needs FOLL_WRITE even to read. Removed in 5.9 (\"mm/gup: Remove enfornced COW "
           "mechanism\").", removed_in="5.9"),
    Switch("cow-reuse-page-count", "5.9", "mm: do_wp_page() simplification",
           "A write fault reuses an anonymous page only when page_count() == 1: an extra "
           "reference, a R/O pin included, forces a copy."),
    Switch("fork-copies-pinned-anon", "5.9",
           "mm: Do early cow for pinned pages during fork() for ptes",
           "fork() copies pinned anonymous pages at once (PMD THPs are split) instead of "
           "sharing them copy-on-write; mm->has_pinned."),
    Switch("gup-fast-write-protect-seq", "5.11",
           "mm/gup: prevent gup_fast from racing with COW during fork",
           "GUP-fast cannot race with fork's write-protection: on a write_protect_seq "
           "collision it falls back to the slow path."),
    Switch("fork-copies-pinned-hugetlb", "5.12",
           "hugetlb: do early cow when page pinned on src mm",
           "fork() copies pinned hugetlb pages at once."),
    Switch("longterm-migrate-movable", "5.13", "mm/gup: migrate pinned pages out of movable zone",
           "FOLL_LONGTERM pins migrate pages out of ZONE_MOVABLE too; the zero page is not "
           "migrated; a failed migration is an error."),
    Switch("anon-exclusive-unshare", "5.19",
           "mm/gup: trigger FAULT_FLAG_UNSHARE when R/O-pinning a possibly shared "
           "anonymous page",
           "PG_anon_exclusive; a R/O pin of a possibly shared anonymous page unshares it "
           "first, so the pin stays in sync with later writes."),
    Switch("foll-force-no-foll-cow", "6.0",
           "mm/gup: fix FOLL_FORCE COW security issue and remove FOLL_COW",
           "A FOLL_FORCE write to a R/O private mapping takes a R/O entry only for an "
           "exclusive anonymous page; before, its retry carried FOLL_COW and took any "
           "dirty R/O entry (CVE-2022-2590: writing R/O shmem files)."),
    Switch("reliable-ro-longterm", "6.2", "mm/gup: reliable R/O long-term pinning in COW mappings",
           "R/O long-term pins in COW mappings stay coherent; FOLL_FORCE|FOLL_WRITE is "
           "refused on hugetlb."),
    Switch("is-valid-gup-args", "6.3",
           "mm/gup: simplify the external interface functions and consolidate invariants",
           "is_valid_gup_args(): slow-path pin_user_pages*() answer 0 to invalid flags "
           "(still warning), pin_user_pages_fast() keeps -EINVAL; before, -EINVAL."),
    Switch("longterm-file-write-refused", "6.5",
           "mm/gup: disallow FOLL_LONGTERM GUP-[non]fast writing to file-backed mappings",
           "Writable FOLL_LONGTERM pins of file mappings that need dirty tracking (ext4, "
           "xfs, btrfs) fail with -EFAULT; shmem and hugetlbfs are exempt."),
    Switch("zero-page-not-pin-counted", "6.5", "mm: Don't pin ZERO_PAGE in pin_user_pages()",
           "pin_user_pages*() no longer pin-count the shared zero page; unpin ignores it."),
    Switch("memfd-pin-folios", "6.11",
           "mm/gup: introduce memfd_pin_folios() for pinning memfd folios",
           "memfd_pin_folios(), unpin_folio() and unpin_folios() exist."),
    Switch("huge-zero-wp-thp", "6.13", "mm: allocate THP on hugezeropage wp-fault",
           "A write fault on the huge zero page allocates a THP instead of splitting the "
           "PMD and faulting a small page (1ced09e0331f, pulled in the 6.13 merge window)."),
    Switch("mremap-move-multiple-vmas", "6.17",
           "mm/mremap: permit mremap() move of multiple VMAs",
           "A pure move (MREMAP_FIXED, same size) may span several VMAs, moved one by one "
           "with the gaps between them kept (d23cb648e365); before, EFAULT. Not pinning, "
           "but the scenarios move memory that mprotect or madvise split."),
)
"""Every modelled change of behaviour, oldest first (see the module docstring)."""

WIRED: frozenset[str] = frozenset({
    "foll-pin", "pin-counting-bias", "nr-foll-pin-vmstat", "gup-forced-cow-break",
    "cow-reuse-page-count", "fork-copies-pinned-anon", "fork-copies-pinned-hugetlb",
    "gup-fast-write-protect-seq", "longterm-migrate-cma", "foll-force-no-foll-cow",
    "longterm-migrate-movable", "anon-exclusive-unshare", "reliable-ro-longterm",
    "is-valid-gup-args", "longterm-file-write-refused", "zero-page-not-pin-counted",
    "memfd-pin-folios", "huge-zero-wp-thp", "mremap-move-multiple-vmas"})
"""The switches the model consults (all of them; a new one may start table-only)."""

SWITCHES_BY_NAME: dict[str, Switch] = {s.name: s for s in SWITCHES}

VMSTAT_SWITCHES: dict[str, str] = {"nr_foll_pin_acquired": "nr-foll-pin-vmstat",
                                   "nr_foll_pin_released": "nr-foll-pin-vmstat"}
"""/proc/vmstat fields that did not always exist: field -> the switch that added it."""

_VERSION = re.compile(r"v?(\d+)\.(\d+)")


def version_key(version: str) -> tuple[int, int]:
    """"6.5" or "v6.5" as (6, 5); ValueError for anything else."""
    if not isinstance(version, str):
        raise TypeError(f"a kernel version is a string such as '6.5', not "
                        f"{type(version).__name__}")
    m = _VERSION.fullmatch(version.strip())
    if m is None:
        raise ValueError(f"kernel version {version!r} is not of the form '6.5' (major.minor; "
                         "stable point releases are not modelled)")
    return int(m.group(1)), int(m.group(2))


def _versions() -> tuple[str, ...]:
    seen = {s.first_version for s in SWITCHES} | {s.removed_in for s in SWITCHES
                                                   if s.removed_in}
    return tuple(sorted(seen, key=version_key))


KERNEL_VERSIONS: tuple[str, ...] = _versions()
"""Every modelled profile: each release at which a switch turns on or off, oldest first."""

NEWEST: str = KERNEL_VERSIONS[-1]
"""The default profile."""


def _nearest(key: tuple[int, int]) -> list[str]:
    keys = [version_key(v) for v in KERNEL_VERSIONS]
    i = bisect.bisect_left(keys, key)
    return [KERNEL_VERSIONS[j] for j in (i - 1, i) if 0 <= j < len(KERNEL_VERSIONS)]


def profile(version: str | None) -> str:
    """The profile `version` names ("v6.5" -> "6.5"; None -> the newest); ValueError,
    naming the nearest profiles, for a version that is not one."""
    if version is None:
        return NEWEST
    key = version_key(version)
    for v in KERNEL_VERSIONS:
        if version_key(v) == key:
            return v
    near = _nearest(key)
    which = (f"the nearest are '{near[0]}' and '{near[1]}'" if len(near) == 2
             else f"the nearest is '{near[0]}'")
    raise ValueError(f"kernel version {version!r} is not a modelled profile: {which} "
                     "(gupsim.KERNEL_VERSIONS lists all; a release between two profiles "
                     "behaves as the older one)")


def behaves_as(release: str) -> str:
    """The profile a kernel release behaves as in the model: the newest profile not
    after it ("6.8.0-51-generic" -> "6.5"); ValueError if it predates every profile."""
    m = re.match(r"v?(\d+)\.(\d+)", release.strip())
    if m is None:
        raise ValueError(f"kernel release {release!r} does not start with major.minor")
    key = int(m.group(1)), int(m.group(2))
    older = [v for v in KERNEL_VERSIONS if version_key(v) <= key]
    if not older:
        raise ValueError(f"kernel release {release!r} predates every modelled profile "
                         f"(the oldest is '{KERNEL_VERSIONS[0]}')")
    return older[-1]


def host_profile(release: str | None = None) -> tuple[str, str]:
    """(profile, why) for a host kernel release (default this host's `uname -r`): the
    newest profile not after it, since every modelled change up to then is in it; a
    release older than every profile gets the oldest, said so."""
    import platform
    release = release or platform.release()
    try:
        chosen = behaves_as(release)
    except ValueError as e:
        return KERNEL_VERSIONS[0], f"{e}; modelling it as v{KERNEL_VERSIONS[0]}"
    newer = [v for v in KERNEL_VERSIONS if version_key(v) > version_key(chosen)]
    why = (f"host kernel {release}: v{chosen} is the newest modelled profile not after it"
           + (f" (the next, v{newer[0]}, is later)" if newer else
              f" (nothing modelled changed after v{chosen})"))
    return chosen, why


class Era:
    """One modelled kernel release: which switches are on (`era.has(name)`)."""

    def __init__(self, version: str | None = None) -> None:
        self.version = profile(version)
        self.key = version_key(self.version)
        # has() runs on every pin and unpin: answer from a table built once per era
        self._on = {s.name: self._computed(s) for s in SWITCHES}

    def __repr__(self) -> str:
        return f"Era('{self.version}')"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Era) and other.version == self.version

    def __hash__(self) -> int:
        return hash(self.version)

    def has(self, name: str) -> bool:
        """Whether switch `name` is on in this era; KeyError names the switches."""
        on = self._on.get(name)
        return self._computed(switch(name)) if on is None else on

    def _computed(self, s: Switch) -> bool:
        if self.key < version_key(s.first_version):
            return False
        return s.removed_in is None or self.key < version_key(s.removed_in)

    def absent(self, name: str, what: str) -> str | None:
        """None when switch `name` is on; else why `what` is absent here (for the
        AttributeError of an entry point or a counter that did not exist yet)."""
        if self.has(name):
            return None
        return (f"{what} appeared in v{switch(name).first_version} "
                f"(\"{switch(name).commit_title}\"); this machine is v{self.version}")

    def require(self, name: str, what: str) -> None:
        """AttributeError, saying when it appeared, if `what` (an entry point of switch
        `name`) did not exist yet in this era."""
        why = self.absent(name, what)
        if why is not None:
            raise AttributeError(why)

    @property
    def switches(self) -> list[Switch]:
        """The switches on in this era."""
        return [s for s in SWITCHES if self.has(s.name)]


def switch(name: str) -> Switch:
    """The switch of that name; KeyError listing the names."""
    try:
        return SWITCHES_BY_NAME[name]
    except KeyError:
        raise KeyError(f"no era switch {name!r}: choose one of "
                       f"{', '.join(SWITCHES_BY_NAME)}") from None


NEWEST_ERA = Era()
"""The era of a machine built without `version=`."""


def render_table(width: int = 80) -> str:
    """The table as `gupsim eras` prints it: one block per switch, within `width` columns."""
    import textwrap
    lines = [f"{len(SWITCHES)} switches; profiles: {', '.join(KERNEL_VERSIONS)} "
             f"(default {NEWEST}); * = wired in the model, the rest table-only", ""]
    for s in SWITCHES:
        since = s.first_version + (f" - {s.removed_in}" if s.removed_in else "")
        mark = "*" if s.name in WIRED else " "
        lines.append(f"{mark} v{since:<10} {s.name}"[:width])
        for label, text in (("", s.behaviour), ("commit: ", f'"{s.commit_title}"')):
            lines += textwrap.wrap(label + text, width, initial_indent=" " * 14,
                                   subsequent_indent=" " * 16)
    return "\n".join(textwrap.fill(ln, width) if len(ln) > width else ln for ln in lines)


def table_rows() -> list[dict[str, object]]:
    """The table as data (`gupsim eras --json`)."""
    return [{"name": s.name, "first_version": s.first_version, "removed_in": s.removed_in,
             "commit_title": s.commit_title, "behaviour": s.behaviour,
             "wired": s.name in WIRED} for s in SWITCHES]


__all__ = ["Switch", "SWITCHES", "SWITCHES_BY_NAME", "VMSTAT_SWITCHES", "WIRED",
           "KERNEL_VERSIONS", "NEWEST", "NEWEST_ERA", "Era", "behaves_as", "host_profile",
           "profile", "switch", "version_key", "render_table", "table_rows"]
