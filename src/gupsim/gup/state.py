"""Per-machine state of the pinning layer: the machine's env, its sanitizer, race points.

The unpin family takes only pages (kernel argument order), so it finds the machine's
allocator from the pages' MemMap through this registry, which `KernelPinning` fills
when a `Kernel` is built. Race points are the named places where a scenario may run a
competing operation (a fork between GUP-fast's PTE read and its grab, for example).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

from ..memory import Allocator, MemMap

if TYPE_CHECKING:
    from ..check.sanitizer import PinSanitizer
    from ..mm import MMEnv

RACE_POINTS = (
    "gup_fast:after_pte_read",     # PTEs read, folios not yet grabbed (fork, munmap, ...)
    "gup_slow:before_fault",       # the slow path is about to fault a page in
    "longterm:before_migrate",     # pins dropped, folios about to be migrated
)


@dataclass(eq=False)
class GupState:
    env: MMEnv
    sanitizer: PinSanitizer | None = None
    race_hooks: dict[str, list[Callable[..., Any]]] = field(default_factory=dict)
    migrate_retry_limit: int = 16
    replace_cache: Callable[[int, int], bool] | None = None   # overrides env.replace_cache
    last_migrate_failure: str = ""

    @property
    def alloc(self) -> Allocator:
        return self.env.alloc

    def on_race(self, point: str, fn: Callable[..., Any]) -> None:
        """Run `fn(**context)` (once) the next time GUP passes the race point `point`."""
        if point not in RACE_POINTS:
            raise ValueError(f"no race point {point!r}: choose one of {RACE_POINTS}")
        self.race_hooks.setdefault(point, []).append(fn)


_states: WeakKeyDictionary[MemMap, GupState] = WeakKeyDictionary()


def register_machine(env: MMEnv) -> GupState:
    """The machine's pinning state, created on first use; also links mm/ to GUP's page
    walk (populate), as the kernel links mm/mmap.c and mm/madvise.c to mm/gup.c."""
    st = _states.get(env.mem)
    if st is None:
        st = _states[env.mem] = GupState(env)
        from .slow import register_populate  # here: slow.py imports this module
        register_populate(env)
    return st


def gup_state(mem: MemMap) -> GupState:
    st = _states.get(mem)
    if st is None:
        raise RuntimeError("these pages belong to a machine the pinning layer does not know: "
                           "create it with gupsim.Kernel()")
    return st


def race_point(mem: MemMap, point: str, **context: Any) -> bool:
    """Run (and forget) the callbacks registered for `point`; True if any ran (the
    machine may have changed, so the caller must re-check what it read)."""
    st = _states.get(mem)
    if st is None or not st.race_hooks.get(point):
        return False
    hooks, st.race_hooks[point] = st.race_hooks[point], []
    for fn in hooks:
        fn(**context)
    return True
