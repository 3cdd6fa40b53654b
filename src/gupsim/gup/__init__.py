"""Page pinning: mirrors mm/gup.c (flags, grab/unpin, slow path, GUP-fast, FOLL_LONGTERM).

Modules: `flags` (FOLL_*, is_valid_gup_args), `grab` (references, pins, unpin family),
`slow` (__get_user_pages), `fast` (GUP-fast), `longterm` (pinnability and migration,
memfd_pin_folios), `accounting` (RLIMIT_MEMLOCK), `entry` (the table of entry points and
the builder of their functions and methods), `api` (the exported entry points),
`facade` (the `Kernel` / `Process` methods), `state` (per-machine state: race points,
the record of the path each call took, `current`).
"""

from .api import *  # noqa: F403 - the exported entry points
from .entry import ENTRY_POINTS, EntryPoint
from .flags import *  # noqa: F403 - FOLL_* values
from .longterm import folio_is_longterm_pinnable
from .state import GUP_PATHS, RACE_POINTS, GupCall

__all__ = [name for name in dir() if name.startswith(("FOLL_", "INTERNAL_"))] + [
    "folio_is_longterm_pinnable", "RACE_POINTS", "ENTRY_POINTS", "EntryPoint", "GupCall",
    "GUP_PATHS"]
from . import api as _api  # noqa: E402

__all__ += _api.__all__
