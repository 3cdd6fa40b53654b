"""A real KVM guest as a case-3 user of the host's memory, from Python (x86-64 only).

`KvmGuest(addr, length)` opens /dev/kvm (KVM_GET_API_VERSION must be 12), creates a VM,
maps guest-physical [0, length) onto the user range [addr, addr + length) as memory
slot 0 (KVM_SET_USER_MEMORY_REGION), puts a page of 16-bit code in a slot of its own at
`CODE_GPA`, creates one vCPU, maps its `struct kvm_run`, and sets real mode (CS and DS
through KVM_SET_SREGS, the registers through KVM_SET_REGS). `read(gpa, n)` runs the
guest: `lodsb; out dx, al; loop; hlt` loads each byte through the guest's own
second-level page table (NPT/EPT, filled by KVM's MMU-notifier-guarded faults) and
reports it with an I/O-port exit (KVM_EXIT_IO), so the bytes are what the guest saw,
not what KVM's emulator would copy from user space.

x86-64 only: the ioctl numbers, the structures and the guest code are x86's. Every fd
and mapping is released by `close()` (a context manager; also on an exception, and
the finalizer covers a guest dropped without close). `kvm_unusable()` says why the
host cannot run a guest, or "" when it can.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import platform
import weakref

from . import libc
from .errors import HostUnsupported

KVM_API_VERSION = 12
KVM_GET_API_VERSION = 0xAE00
KVM_CREATE_VM = 0xAE01
KVM_GET_VCPU_MMAP_SIZE = 0xAE04
KVM_CREATE_VCPU = 0xAE41
KVM_RUN = 0xAE80
KVM_SET_USER_MEMORY_REGION = 0x4020AE46     # _IOW(KVMIO, 0x46, 32 bytes)
KVM_GET_REGS = 0x8090AE81                   # _IOR(KVMIO, 0x81, 144 bytes)
KVM_SET_REGS = 0x4090AE82
KVM_GET_SREGS = 0x8138AE83                  # _IOR(KVMIO, 0x83, 312 bytes)
KVM_SET_SREGS = 0x4138AE84

KVM_EXIT_IO = 2
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_MEMORY_FAULT = 39
KVM_EXIT_IO_OUT = 1
EXIT_NAMES = {0: "UNKNOWN", 2: "IO", 5: "HLT", 6: "MMIO", 8: "SHUTDOWN", 9: "FAIL_ENTRY",
              17: "INTERNAL_ERROR", 39: "MEMORY_FAULT"}

PAGE_SIZE = 4096
CODE_GPA = 0xF0000          # the code page: CS = 0xF000, IP = 0 (real mode reaches it)
MAX_GUEST_MEMORY = CODE_GPA  # slot 0 sits below the code page
MAX_READ = 0x10000 - 16     # SI is 16 bits: one DS segment per read
REPORT_PORT = 0x3F8
# lodsb (AL = DS:[SI], SI += 1); out dx, al; loop back (CX -= 1) while CX; hlt
GUEST_CODE = bytes([0xAC, 0xEE, 0xE2, 0xFC, 0xF4])


class kvm_userspace_memory_region(ctypes.Structure):  # noqa: N801 - the kernel's name
    """struct kvm_userspace_memory_region: one memory slot (KVM_SET_USER_MEMORY_REGION)."""

    _fields_ = [("slot", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("guest_phys_addr", ctypes.c_uint64), ("memory_size", ctypes.c_uint64),
                ("userspace_addr", ctypes.c_uint64)]


class kvm_regs(ctypes.Structure):  # noqa: N801
    """struct kvm_regs: the vCPU's general registers (KVM_GET_REGS / KVM_SET_REGS)."""

    _fields_ = [(n, ctypes.c_uint64) for n in (
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11",
        "r12", "r13", "r14", "r15", "rip", "rflags")]


class kvm_segment(ctypes.Structure):  # noqa: N801
    """struct kvm_segment: one segment register as KVM_GET_SREGS / KVM_SET_SREGS see it."""

    _fields_ = [("base", ctypes.c_uint64), ("limit", ctypes.c_uint32),
                ("selector", ctypes.c_uint16), ("type", ctypes.c_uint8),
                ("present", ctypes.c_uint8), ("dpl", ctypes.c_uint8), ("db", ctypes.c_uint8),
                ("s", ctypes.c_uint8), ("l", ctypes.c_uint8), ("g", ctypes.c_uint8),
                ("avl", ctypes.c_uint8), ("unusable", ctypes.c_uint8),
                ("padding", ctypes.c_uint8)]


class kvm_dtable(ctypes.Structure):  # noqa: N801
    """struct kvm_dtable: the GDT or IDT base and limit, inside kvm_sregs."""

    _fields_ = [("base", ctypes.c_uint64), ("limit", ctypes.c_uint16),
                ("padding", ctypes.c_uint16 * 3)]


class kvm_sregs(ctypes.Structure):  # noqa: N801
    """struct kvm_sregs: segment and control registers (real mode is set through them)."""

    _fields_ = [("cs", kvm_segment), ("ds", kvm_segment), ("es", kvm_segment),
                ("fs", kvm_segment), ("gs", kvm_segment), ("ss", kvm_segment),
                ("tr", kvm_segment), ("ldt", kvm_segment), ("gdt", kvm_dtable),
                ("idt", kvm_dtable), ("cr0", ctypes.c_uint64), ("cr2", ctypes.c_uint64),
                ("cr3", ctypes.c_uint64), ("cr4", ctypes.c_uint64), ("cr8", ctypes.c_uint64),
                ("efer", ctypes.c_uint64), ("apic_base", ctypes.c_uint64),
                ("interrupt_bitmap", ctypes.c_uint64 * 4)]


class kvm_run_io(ctypes.Structure):  # noqa: N801 - the head of struct kvm_run, exit.io
    """The head of struct kvm_run and its exit.io union member: why the guest exited."""

    _fields_ = [("request_interrupt_window", ctypes.c_uint8),
                ("immediate_exit", ctypes.c_uint8), ("padding1", ctypes.c_uint8 * 6),
                ("exit_reason", ctypes.c_uint32),
                ("ready_for_interrupt_injection", ctypes.c_uint8),
                ("if_flag", ctypes.c_uint8), ("flags", ctypes.c_uint16),
                ("cr8", ctypes.c_uint64), ("apic_base", ctypes.c_uint64),
                ("io_direction", ctypes.c_uint8), ("io_size", ctypes.c_uint8),
                ("io_port", ctypes.c_uint16), ("io_count", ctypes.c_uint32),
                ("io_data_offset", ctypes.c_uint64)]


assert ctypes.sizeof(kvm_userspace_memory_region) == 32
assert ctypes.sizeof(kvm_regs) == 144 and ctypes.sizeof(kvm_sregs) == 312


def _ioctl(fd: int, request: int, arg: int | bytes | ctypes.Structure = 0) -> int:
    """ioctl() that retries EINTR: its return value (0 for a bytes argument, which is
    only read); a structure argument is read and written in place."""
    while True:
        try:
            if isinstance(arg, ctypes.Structure):
                return fcntl.ioctl(fd, request, arg, True)
            if isinstance(arg, bytes):      # fcntl hands back the buffer: success is 0
                fcntl.ioctl(fd, request, arg)
                return 0
            return fcntl.ioctl(fd, request, arg)
        except InterruptedError:
            continue


def kvm_unusable() -> str:
    """Why this host cannot run a KVM guest from Python ("" if it can)."""
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        return f"the KVM guest is x86-64 only; this is {platform.system()} {platform.machine()}"
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"/dev/kvm cannot be opened: {exc.strerror} (errno {exc.errno})"
    try:
        version = _ioctl(fd, KVM_GET_API_VERSION)
        if version != KVM_API_VERSION:
            return f"KVM_GET_API_VERSION is {version}, not {KVM_API_VERSION}"
        with KvmGuest(0, 0):
            pass
    except HostUnsupported as exc:
        return exc.reason
    except OSError as exc:
        return f"a KVM VM cannot be created: {exc.strerror or exc} (errno {exc.errno})"
    finally:
        os.close(fd)
    return ""


def _release(fds: list[int], maps: list[tuple[int, int]]) -> None:
    """Close fds and unmap mappings (newest first); what is released leaves the lists."""
    while maps:
        addr, length = maps.pop()
        try:
            libc.munmap(addr, length)
        except OSError:
            pass
    while fds:
        try:
            os.close(fds.pop())
        except OSError:
            pass


class KvmGuest:
    """A VM with one real-mode vCPU whose slot 0 is the user range [addr, addr + length)
    (length 0: no slot 0, for probing). Use as a context manager."""

    def __init__(self, addr: int, length: int) -> None:
        if length < 0 or length % PAGE_SIZE or addr % PAGE_SIZE:
            raise ValueError(f"guest memory at {addr:#x} of {length} bytes: use a "
                             "page-aligned address and a length that is a multiple of 4096")
        if length > MAX_GUEST_MEMORY:
            raise ValueError(f"a real-mode guest reaches {MAX_GUEST_MEMORY:#x} bytes below "
                             f"its code page; {length:#x} is too large: map less")
        self.addr, self.length = addr, length
        self.fds: list[int] = []
        self.maps: list[tuple[int, int]] = []
        self.kvm = self.vm = self.vcpu = -1
        self.run: kvm_run_io | None = None
        self.run_size = 0
        self.exits = 0
        self._finalizer: weakref.finalize | None = None
        self._open()

    def _open(self) -> None:
        libc.check_arch()
        try:
            self.kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise HostUnsupported(f"/dev/kvm cannot be opened: {exc.strerror}") from exc
        self.fds.append(self.kvm)
        self._finalizer = weakref.finalize(self, _release, self.fds, self.maps)
        try:
            if _ioctl(self.kvm, KVM_GET_API_VERSION) != KVM_API_VERSION:
                raise HostUnsupported(f"KVM_GET_API_VERSION is not {KVM_API_VERSION}")
            self.vm = _ioctl(self.kvm, KVM_CREATE_VM, 0)
            self.fds.append(self.vm)
            code = libc.mmap(0, PAGE_SIZE, libc.PROT_READ | libc.PROT_WRITE,
                             libc.MAP_PRIVATE | libc.MAP_ANONYMOUS)
            self.maps.append((code, PAGE_SIZE))
            ctypes.memmove(code, GUEST_CODE, len(GUEST_CODE))
            self.set_region(1, CODE_GPA, PAGE_SIZE, code)
            if self.length:
                self.set_region(0, 0, self.length, self.addr)
            self.vcpu = _ioctl(self.vm, KVM_CREATE_VCPU, 0)
            self.fds.append(self.vcpu)
            self.run_size = _ioctl(self.kvm, KVM_GET_VCPU_MMAP_SIZE)
            run = libc.mmap(0, self.run_size, libc.PROT_READ | libc.PROT_WRITE,
                            libc.MAP_SHARED, self.vcpu, 0)
            self.maps.append((run, self.run_size))
            self.run = kvm_run_io.from_address(run)
        except BaseException:
            self.close()
            raise

    def set_region(self, slot: int, gpa: int, size: int, userspace_addr: int) -> None:
        """KVM_SET_USER_MEMORY_REGION (size 0 deletes the slot)."""
        region = kvm_userspace_memory_region(slot, 0, gpa, size, userspace_addr)
        _ioctl(self.vm, KVM_SET_USER_MEMORY_REGION, bytes(region))

    def _real_mode(self, gpa: int, n: int) -> None:
        """CS:IP at the code page, DS:SI at gpa, CX = n, DX = the report port."""
        sregs = kvm_sregs()
        _ioctl(self.vcpu, KVM_GET_SREGS, sregs)
        sregs.cs.selector, sregs.cs.base = CODE_GPA >> 4, CODE_GPA
        sregs.ds.selector, sregs.ds.base = gpa >> 4, (gpa >> 4) << 4
        _ioctl(self.vcpu, KVM_SET_SREGS, sregs)
        regs = kvm_regs()
        regs.rip, regs.rflags = 0, 0x2
        regs.rsi, regs.rcx, regs.rdx = gpa & 0xF, n, REPORT_PORT
        _ioctl(self.vcpu, KVM_SET_REGS, regs)

    def read(self, gpa: int, n: int) -> bytes:
        """Run the guest: it loads n bytes at guest-physical gpa and reports each one
        through an I/O-port exit. OSError(EFAULT) when no memory is behind gpa (no slot,
        or no mapping at the slot's user address)."""
        if self.run is None:
            raise OSError(errno.EBADF, "the guest is closed")
        if not 0 < n <= MAX_READ or gpa < 0 or gpa + n > MAX_GUEST_MEMORY:
            raise ValueError(f"read {n} bytes at gpa {gpa:#x}: keep 0 < n <= {MAX_READ} "
                             f"and the range below {MAX_GUEST_MEMORY:#x}")
        self._real_mode(gpa, n)
        out = bytearray()
        run = self.run
        base = ctypes.addressof(run)
        while True:
            try:
                _ioctl(self.vcpu, KVM_RUN)
            except OSError as exc:       # -EFAULT: no page behind the hva (KVM_EXIT_MEMORY_FAULT)
                raise OSError(exc.errno, f"KVM_RUN at gpa {gpa + len(out):#x}: "
                              f"{os.strerror(exc.errno or errno.EIO)}") from None
            self.exits += 1
            reason = run.exit_reason
            if reason == KVM_EXIT_IO and run.io_direction == KVM_EXIT_IO_OUT \
                    and run.io_port == REPORT_PORT:
                size, count = run.io_size, run.io_count
                out += ctypes.string_at(base + run.io_data_offset, size * count)
                continue
            if reason == KVM_EXIT_HLT:
                break
            if reason in (KVM_EXIT_MMIO, KVM_EXIT_MEMORY_FAULT):
                self._complete_pending()
                raise OSError(errno.EFAULT, f"the guest read gpa {gpa + len(out):#x}, where "
                              f"there is no guest memory (KVM_EXIT_{EXIT_NAMES[reason]})")
            raise OSError(errno.EIO, f"unexpected KVM exit "
                          f"{EXIT_NAMES.get(reason, str(reason))} after {len(out)} bytes")
        if len(out) != n:
            raise OSError(errno.EIO, f"the guest reported {len(out)} bytes, not {n}")
        return bytes(out)

    def _complete_pending(self) -> None:
        """Finish the exit KVM left pending (an emulated load waiting for MMIO data) without
        running the guest, so that the next read starts clean: KVM_RUN with
        immediate_exit set completes it and returns EINTR."""
        run = self.run
        assert run is not None
        run.immediate_exit = 1
        try:
            fcntl.ioctl(self.vcpu, KVM_RUN, 0)
        except OSError:
            pass
        finally:
            run.immediate_exit = 0

    def close(self) -> None:
        """Unmap kvm_run and the code page, close the vCPU, VM and /dev/kvm fds."""
        self.run = None
        if self._finalizer is not None:
            self._finalizer()
        else:
            _release(self.fds, self.maps)

    def __enter__(self) -> KvmGuest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["CODE_GPA", "GUEST_CODE", "KVM_API_VERSION", "MAX_GUEST_MEMORY", "MAX_READ",
           "KvmGuest", "kvm_unusable"]
