"""gupsim.live: drive the host kernel's real pinning paths from pure Python.

The model is checked against this: io_uring fixed buffers, AF_XDP UMEM, O_DIRECT and
process_vm_readv take real FOLL_PIN pins; `vmstat` reads the kernel's pin counters
exactly; `proc` shows VmPin; `child` runs code in a forked (optionally unprivileged)
process. Every object is a context manager that releases what it took, and settings
are also restored at exit. Linux x86-64 only.
"""

from __future__ import annotations

from .capabilities import Capability, host_capabilities
from .child import Child, run_in_child
from .cleanup import LiveStack
from .errors import ChildError, HostUnsupported
from .hostmem import HostMapping, PagemapEntry, kpagecount, kpageflags, pagemap
from .odirect import DirectFile, user_buffer
from .proc import (
    PinnedProcess,
    UringBuffer,
    pinned_processes,
    proc_status,
    uring_fdinfo,
    vm_pin_kb,
)
from .procvm import process_vm_readv, process_vm_writev, read_remote, write_remote
from .repair import Repair, repair_dead_runs
from .settings import Setting, hugepages, read_setting, thp_size_enabled
from .uring import IoUring
from .vmstat import (
    Measured,
    Measurement,
    Meter,
    PinCounters,
    PinDelta,
    measure,
    measure_repeat,
    pin_counters,
    wait_outstanding,
)
from .xdp import XdpUmem

__all__ = [
    "Capability", "Child", "ChildError", "DirectFile", "HostMapping", "HostUnsupported",
    "IoUring", "LiveStack", "Measured", "Measurement", "Meter", "PagemapEntry",
    "PinCounters", "PinDelta", "PinnedProcess", "Repair", "Setting", "UringBuffer", "XdpUmem",
    "host_capabilities",
    "hugepages", "kpagecount", "kpageflags", "measure", "measure_repeat", "pagemap",
    "pin_counters", "pinned_processes", "proc_status", "process_vm_readv",
    "process_vm_writev", "read_remote", "read_setting", "repair_dead_runs", "run_in_child",
    "thp_size_enabled", "uring_fdinfo", "user_buffer", "vm_pin_kb", "wait_outstanding",
    "write_remote",
]
