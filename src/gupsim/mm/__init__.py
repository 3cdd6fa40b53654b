"""Address spaces: VMAs, page tables, faults, COW, fork, exit and the memory syscalls."""

from .access import BusError, OOMKilled, SegmentationFault, access_read, access_write
from .env import MMEnv, SwapDevice, ThpSettings
from .fault import FaultFlag, VMFault, handle_mm_fault
from .file import MappableFile
from .fork import dup_mm, exit_mmap
from .mm_struct import MM, MMF, Cred, UserStruct
from .rmap import MMRmap
from .vma import PTE, VM, VMA

__all__ = ["BusError", "OOMKilled", "SegmentationFault", "access_read", "access_write",
           "MMEnv", "SwapDevice", "ThpSettings", "FaultFlag", "VMFault", "handle_mm_fault",
           "MappableFile", "dup_mm", "exit_mmap", "MM", "MMF", "Cred", "UserStruct", "MMRmap",
           "PTE", "VM", "VMA"]
