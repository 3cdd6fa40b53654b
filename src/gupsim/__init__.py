"""gupsim: an executable model of Linux page pinning, checked against the host kernel.

Start with `gupsim.Kernel`, spawn a process, map memory, and pin it; see DESIGN.md for
the public contract and README.md for a tour. The GUP entry points are built from one
table, `gupsim.ENTRY_POINTS` (see `gupsim.gup.entry`), and `k.gup.last_call` says which
path the last one took.
"""

from .constants import *  # noqa: F403 - the kernel's constants are part of the public API
from .gup import *  # noqa: F403 - FOLL_* flags and the GUP/PUP entry points
from .kernel import Kernel, Process
from .memory import (
    GUP_PIN_COUNTING_BIAS,
    Folio,
    Page,
    PageArray,
    folio_maybe_dma_pinned,
    page_maybe_dma_pinned,
)
from .mm import BusError, OOMKilled, SegmentationFault

__version__ = "0.1.0"
