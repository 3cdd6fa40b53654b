"""Kernel constants the model shares with user space and with drivers.

Values are the x86-64 Linux ABI values (facts, not kernel text), so that a number seen
in a trace or passed to the host means the same thing in the model.
"""

from __future__ import annotations

import errno as _errno

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
PAGE_MASK = ~(PAGE_SIZE - 1)
PMD_ORDER = 9                      # 2 MiB on x86-64
PMD_SIZE = PAGE_SIZE << PMD_ORDER
PUD_ORDER = 18                     # 1 GiB
PUD_SIZE = PAGE_SIZE << PUD_ORDER
MAX_PAGE_ORDER = 10                # largest buddy block (4 MiB)
TASK_SIZE = 1 << 47                # user address space limit (TASK_SIZE_MAX, 4-level paging)
MMAP_BASE = 0x7F0000000000         # where mmap() without a hint starts searching downwards
MMAP_MIN_ADDR = 0x10000            # vm.mmap_min_addr

# errno values: the same numbers as os / the host kernel.
EPERM = _errno.EPERM
ENOENT = _errno.ENOENT
EINTR = _errno.EINTR
EIO = _errno.EIO
EBADF = _errno.EBADF
EAGAIN = _errno.EAGAIN
ENOMEM = _errno.ENOMEM
EACCES = _errno.EACCES
EFAULT = _errno.EFAULT
EBUSY = _errno.EBUSY
EEXIST = _errno.EEXIST
ENODEV = _errno.ENODEV
EINVAL = _errno.EINVAL
EFBIG = _errno.EFBIG
ENOSPC = _errno.ENOSPC
ESPIPE = _errno.ESPIPE
ERANGE = _errno.ERANGE
ENOSYS = _errno.ENOSYS
EOVERFLOW = _errno.EOVERFLOW
EOPNOTSUPP = _errno.EOPNOTSUPP
EREMOTEIO = _errno.EREMOTEIO
EHWPOISON = 133  # Linux value; Python's errno module lacks it

# mmap(2) protections and flags
PROT_NONE = 0x0
PROT_READ = 0x1
PROT_WRITE = 0x2
PROT_EXEC = 0x4
MAP_SHARED = 0x01
MAP_PRIVATE = 0x02
MAP_SHARED_VALIDATE = 0x03
MAP_TYPE = 0x0F
MAP_FIXED = 0x10
MAP_ANONYMOUS = 0x20
MAP_GROWSDOWN = 0x0100
MAP_DENYWRITE = 0x0800
MAP_EXECUTABLE = 0x1000
MAP_LOCKED = 0x2000
MAP_NORESERVE = 0x4000
MAP_POPULATE = 0x8000
MAP_NONBLOCK = 0x10000
MAP_STACK = 0x20000
MAP_HUGETLB = 0x40000
MAP_SYNC = 0x80000
MAP_FIXED_NOREPLACE = 0x100000
MAP_HUGE_SHIFT = 26
MAP_HUGE_MASK = 0x3F
MAP_HUGE_2MB = 21 << MAP_HUGE_SHIFT
MAP_HUGE_1GB = 30 << MAP_HUGE_SHIFT
MAP_FLAGS_KNOWN = (MAP_TYPE | MAP_FIXED | MAP_ANONYMOUS | MAP_GROWSDOWN | MAP_DENYWRITE
                   | MAP_EXECUTABLE | MAP_LOCKED | MAP_NORESERVE | MAP_POPULATE | MAP_NONBLOCK
                   | MAP_STACK | MAP_HUGETLB | MAP_SYNC | MAP_FIXED_NOREPLACE
                   | (MAP_HUGE_MASK << MAP_HUGE_SHIFT))

# madvise(2)
MADV_NORMAL = 0
MADV_RANDOM = 1
MADV_SEQUENTIAL = 2
MADV_WILLNEED = 3
MADV_DONTNEED = 4
MADV_FREE = 8
MADV_REMOVE = 9
MADV_DONTFORK = 10
MADV_DOFORK = 11
MADV_MERGEABLE = 12
MADV_UNMERGEABLE = 13
MADV_HUGEPAGE = 14
MADV_NOHUGEPAGE = 15
MADV_DONTDUMP = 16
MADV_DODUMP = 17
MADV_WIPEONFORK = 18
MADV_KEEPONFORK = 19
MADV_COLD = 20
MADV_PAGEOUT = 21
MADV_POPULATE_READ = 22
MADV_POPULATE_WRITE = 23
MADV_COLLAPSE = 25
MADV_HWPOISON = 100

# mremap(2)
MREMAP_MAYMOVE = 1
MREMAP_FIXED = 2
MREMAP_DONTUNMAP = 4

# mlock2(2)
MLOCK_ONFAULT = 1

# memfd_create(2)
MFD_CLOEXEC = 0x1
MFD_ALLOW_SEALING = 0x2
MFD_HUGETLB = 0x4

# open(2)
O_RDONLY = 0o0
O_WRONLY = 0o1
O_RDWR = 0o2
O_ACCMODE = 0o3
O_CREAT = 0o100
O_TRUNC = 0o1000
O_DIRECT = 0o40000

# FOLL_* flags of get_user_pages()/pin_user_pages() (current enum values). They live
# here, the lowest layer, so that every layer (gup/, check/, drivers/) imports the same
# numbers; gup/flags.py re-exports them with the argument validation.
# Public flags (include/linux/mm_types.h), bits 0-12:
FOLL_WRITE = 1 << 0
FOLL_GET = 1 << 1
FOLL_DUMP = 1 << 2
FOLL_FORCE = 1 << 3
FOLL_NOWAIT = 1 << 4
FOLL_NOFAULT = 1 << 5
FOLL_HWPOISON = 1 << 6
FOLL_ANON = 1 << 7
FOLL_LONGTERM = 1 << 8
FOLL_SPLIT_PMD = 1 << 9
FOLL_PCI_P2PDMA = 1 << 10
FOLL_INTERRUPTIBLE = 1 << 11
FOLL_HONOR_NUMA_FAULT = 1 << 12
# Internal flags (mm/internal.h), bits 16-22: callers of the exported API may not pass them.
FOLL_TOUCH = 1 << 16
FOLL_TRIED = 1 << 17
FOLL_REMOTE = 1 << 18
FOLL_PIN = 1 << 19
FOLL_FAST_ONLY = 1 << 20
FOLL_UNLOCKABLE = 1 << 21
FOLL_MADV_POPULATE = 1 << 22
INTERNAL_GUP_FLAGS = (FOLL_TOUCH | FOLL_TRIED | FOLL_REMOTE | FOLL_PIN | FOLL_FAST_ONLY
                      | FOLL_UNLOCKABLE | FOLL_MADV_POPULATE)
# Before 6.0 only (era switch foll-force-no-foll-cow): the slow path's own flag for the
# retry after a FOLL_FORCE write fault broke COW, at its 4.9 - 5.19 value (bit 14, unused
# in today's layout, so it cannot be mistaken for another flag).
FOLL_COW = 0x4000

RLIM_INFINITY = (1 << 64) - 1
CAP_IPC_LOCK = 14
CAP_SYS_RESOURCE = 24    # raising a hard rlimit (do_prlimit)
