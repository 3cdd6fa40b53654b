"""What `gupsim bench` measures: one small declaration per case, each with its goal.

The goals are issue 13's: bulk pin, unpin and both at or below the kernel (1.0x) from
64 MiB to 1 GiB; THP and hugetlb pin+unpin per 4 KiB at or below the kernel; a one-page
call at or below 10 us; 16 pages per call at or below 20x the kernel; fork, exit and
munmap of pinned and unpinned ranges at or below the kernel; model fuzzing at or above
10,000 steps/s; at most 32 bytes resident per touched page.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PIN_PHASES = ("pin", "unpin", "pin+unpin")
LIFE_PHASES = ("fork", "exit", "munmap")
SIZES = (1 << 14, 1 << 16, 1 << 18)          # 64 MiB, 256 MiB, 1 GiB in 4 KiB pages
MAX_N_RANGE = 1 << 14                        # pages per -n case (64 MiB at most)
FUZZ_STEPS = 1000
MEMORY_PAGES = 1 << 18                       # 1 GiB populated in a 1 TiB machine


@dataclass(frozen=True)
class Goal:
    """`ratio`: model/host at most `value`; `max`/`min`: the model's own figure."""

    kind: str
    value: float
    phases: tuple[str, ...] | None = None    # None: every phase of the case

    def text(self, unit: str) -> str:
        """The goal as printed: "<= 1.0x host", "<= 10 us/call", ">= 10000 steps/s"."""
        if self.kind == "ratio":
            return f"<= {self.value:g}x"
        return f"{'<=' if self.kind == 'max' else '>='} {self.value:g} {unit}"

    def applies(self, phase: str) -> bool:
        """Whether this goal is set for `phase`."""
        return self.phases is None or phase in self.phases


@dataclass(frozen=True)
class Case:
    """One measured case: the workload (same name on both sides), its arguments, how a
    round's seconds become the printed figure, and the goal."""

    name: str
    workload: str
    params: dict[str, object] = field(hash=False)
    unit: str                    # ns/page, us/call, ms, steps/s, B/page
    per: int                     # pages or calls (ns/page, us/call) or steps (steps/s)
    phases: tuple[str, ...]
    goal: Goal
    host: bool = True            # False: the model only (no kernel counterpart)
    rounds: int | None = None    # cap on the rounds (an expensive, stable figure)
    # measured on its own, not in turns with the others (runner.run()): its host side
    # times a fork, which copies every mapping the others keep open in the worker
    alone: bool = False


def bulk(pages: int, backing: str = "small") -> Case:
    """One call pins the whole range."""
    label = {"small": "bulk", "thp": "THP", "hugetlb": "hugetlb"}[backing]
    # huge pages: io_uring keeps one pin per folio (its unpin is per folio, the model's
    # unpin_user_pages() reads every entry), so the goal is on pin+unpin together
    goal = Goal("ratio", 1.0, None if backing == "small" else ("pin+unpin",))
    return Case(f"{label} {_size(pages)}", "bulk", {"pages": pages, "backing": backing},
                "ns/page", pages, PIN_PHASES, goal)


def per_call(pages: int, n: int) -> Case:
    """gup_test -n n over the range."""
    pages = max(n, min(pages, MAX_N_RANGE) // n * n)
    goal = Goal("max", 10.0, ("pin",)) if n == 1 else Goal("ratio", 20.0 if n <= 16 else 1.0)
    return Case(f"-n {n} ({_size(pages)})", "per_call", {"pages": pages, "n": n}, "us/call",
                pages // n, PIN_PHASES, goal)


def lifecycle(pages: int, pinned: bool) -> Case:
    """fork / exit / munmap of a range, pinned or not."""
    return Case(f"{'pinned' if pinned else 'unpinned'} {_size(pages)}", "lifecycle",
                {"pages": pages, "pinned": pinned}, "ms", 1, LIFE_PHASES, Goal("ratio", 1.0),
                alone=True)


def fuzz(steps: int = FUZZ_STEPS) -> Case:
    """Random model steps per second."""
    return Case(f"fuzz {steps} steps", "fuzz", {"steps": steps}, "steps/s", steps, ("steps",),
                Goal("min", 10_000), host=False)


def memory(pages: int = MEMORY_PAGES) -> Case:
    """Resident bytes per populated page."""
    return Case(f"memory {_size(pages)}", "memory", {"pages": pages}, "B/page", 1,
                ("resident", "glibc heap"), Goal("max", 32), host=False, rounds=1)


def _size(pages: int) -> str:
    size = pages * 4096
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift} {unit}"
    return f"{pages} pages"


def default_cases(max_pages: int, ns: tuple[int, ...] = (1, 16)) -> list[Case]:
    """Every case at sizes up to `max_pages` (the bulk ladder 64 MiB, 256 MiB, 1 GiB below
    it, then `max_pages` itself); huge page cases round up to whole 2 MiB pages."""
    sizes = sorted({s for s in SIZES if s < max_pages} | {max_pages})
    huge = max(512, max_pages // 512 * 512)
    return ([bulk(s) for s in sizes]
            + [per_call(max_pages, n) for n in ns]
            + [bulk(huge, "thp"), bulk(huge, "hugetlb")]
            + [lifecycle(max_pages, False), lifecycle(max_pages, True)]
            + [fuzz(), memory()])
