"""Accounting of pinned memory (spec 8): account_locked_vm() against RLIMIT_MEMLOCK and
CAP_IPC_LOCK, the RDMA-style pinned_vm charge, VmPin / VmLck in /proc/<pid>/status, and
io_uring fixed buffers, which charge both the mm (VmPin) and the user's locked_vm.

GUP itself charges nothing: whoever keeps pages pinned for long decides what to charge
and to whom, and these tests check that each user does it as the kernel does.
"""

from __future__ import annotations

import errno

import pytest
from gup_helpers import net_pins

from gupsim import (
    CAP_IPC_LOCK,
    ENOMEM,
    FOLL_LONGTERM,
    FOLL_WRITE,
    MADV_HUGEPAGE,
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    MAP_SHARED,
    PAGE_SIZE,
    PMD_SIZE,
    PROT_READ,
    PROT_WRITE,
    RLIM_INFINITY,
    Kernel,
    Page,
    PageArray,
    Process,
)
from gupsim.drivers.io_uring import RING_PAGES, IoRing
from gupsim.gup.accounting import account_pinned_vm, unaccount_pinned_vm

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS
KB = PAGE_SIZE // 1024
LIMIT = 16 * PAGE_SIZE           # RLIMIT_MEMLOCK of the unprivileged user: 16 pages


def user(k: Kernel, uid: int = 1000, limit: int = LIMIT, caps: set[int] | None = None
         ) -> Process:
    """An unprivileged process (no CAP_IPC_LOCK unless given) with RLIMIT_MEMLOCK `limit`."""
    return k.spawn("user", uid=uid, caps=set() if caps is None else caps,
                   rlimit_memlock=limit)


def status(p: Process) -> tuple[int, int]:
    """(VmPin, VmLck) in kB, as /proc/<pid>/status shows them."""
    st = p.proc_status()
    return st["VmPin"], st["VmLck"]


def buffer(p: Process, npages: int) -> int:
    a = p.mmap(0, npages * PAGE_SIZE, RW, ANON)
    for i in range(npages):
        p.write(a + i * PAGE_SIZE, bytes([i + 1]))
    return a


# -- account_locked_vm() ----------------------------------------------------------------------


def test_account_locked_vm_charges_up_to_rlimit_memlock(k: Kernel) -> None:
    """Without CAP_IPC_LOCK: locked_vm + pages > RLIMIT_MEMLOCK pages is -ENOMEM and
    charges nothing; exactly reaching the limit is fine. The charge shows as VmLck."""
    p = user(k)
    assert p.account_locked_vm(10, True) == 0
    assert status(p) == (0, 10 * KB)
    assert p.account_locked_vm(7, True) == -ENOMEM
    assert status(p) == (0, 10 * KB)
    assert p.account_locked_vm(6, True) == 0
    assert status(p) == (0, 16 * KB)
    assert p.account_locked_vm(1, True) == -ENOMEM
    assert not p.mm.mmap_lock.held(), "mmap_lock is taken and dropped inside"
    assert p.account_locked_vm(16, False) == 0
    assert status(p) == (0, 0)
    assert not k.warnings.sites()


def test_uncharging_more_than_was_charged_warns_and_clamps(k: Kernel) -> None:
    """An unbalanced uncharge warns once and leaves locked_vm at 0, not negative."""
    p = user(k)
    assert p.account_locked_vm(4, True) == 0
    assert p.account_locked_vm(9, False) == 0
    assert p.mm.locked_vm == 0
    assert k.warnings.sites() == ["__account_locked_vm: underflow"]


@pytest.mark.parametrize("how", ["root", "capability", "granted later"])
def test_cap_ipc_lock_lifts_the_limit_but_the_charge_still_counts(k: Kernel, how: str) -> None:
    """CAP_IPC_LOCK skips the limit check; locked_vm and VmLck still move."""
    if how == "root":
        p = k.spawn("root", rlimit_memlock=LIMIT)
    elif how == "capability":
        p = user(k, caps={CAP_IPC_LOCK})
    else:
        p = user(k)
        assert p.account_locked_vm(17, True) == -ENOMEM
        p.cred.caps.add(CAP_IPC_LOCK)
    assert p.account_locked_vm(1000, True) == 0
    assert status(p) == (0, 1000 * KB)
    assert p.account_locked_vm(1000, False) == 0 and status(p) == (0, 0)


def test_rlimit_infinity_never_refuses(k: Kernel) -> None:
    """RLIM_INFINITY means no limit, not a large number of bytes."""
    p = user(k, limit=RLIM_INFINITY)
    assert p.account_locked_vm(1 << 30, True) == 0
    assert p.mm.locked_vm == 1 << 30


def test_nothing_to_charge_is_a_no_op(k: Kernel) -> None:
    """pages == 0 or no mm: 0 without looking at the limit (even a limit of 0)."""
    p = user(k, limit=0)
    assert p.account_locked_vm(0, True) == 0
    assert k.account_locked_vm(None, 5, True, p.cred) == 0
    assert p.account_locked_vm(1, True) == -ENOMEM
    assert status(p) == (0, 0)


def test_locked_vm_is_shared_with_mlock(k: Kernel) -> None:
    """VFIO-style charges and mlock() draw on the same locked_vm, hence the same VmLck."""
    p = user(k)
    a = p.mmap(0, 4 * PAGE_SIZE, RW, ANON)
    p.mlock(a, 4 * PAGE_SIZE)
    assert status(p) == (0, 4 * KB)
    assert p.account_locked_vm(12, True) == 0
    assert status(p) == (0, 16 * KB)
    assert p.account_locked_vm(1, True) == -ENOMEM
    b = p.mmap(0, PAGE_SIZE, RW, ANON)
    with pytest.raises(OSError) as e:
        p.mlock(b, PAGE_SIZE)
    assert e.value.errno == errno.ENOMEM
    p.munlock(a, 4 * PAGE_SIZE)
    assert p.account_locked_vm(4, True) == 0 and status(p) == (0, 16 * KB)


def test_gup_itself_charges_nothing(k: Kernel) -> None:
    """A long-term pin of far more than RLIMIT_MEMLOCK succeeds and shows in neither VmPin
    nor VmLck: charging is the pinning subsystem's job (spec 8.1)."""
    p = user(k, limit=PAGE_SIZE)
    a = buffer(p, 64)
    vec = PageArray(64)
    assert p.pin_user_pages_fast(a, 64, FOLL_WRITE | FOLL_LONGTERM, vec) == 64
    assert status(p) == (0, 0)
    k.unpin_user_pages(vec)


def test_pinned_vm_charge_of_the_rdma_kind(k: Kernel) -> None:
    """ib_umem_get()/vhost-vdpa: pinned_vm += n unless the new total exceeds
    RLIMIT_MEMLOCK without CAP_IPC_LOCK; shows as VmPin, not VmLck."""
    p = user(k)
    assert account_pinned_vm(p.mm, 12, p.cred) == 0
    assert status(p) == (12 * KB, 0)
    assert account_pinned_vm(p.mm, 5, p.cred) == -ENOMEM
    assert status(p) == (12 * KB, 0), "a refused charge is undone"
    p.cred.caps.add(CAP_IPC_LOCK)
    assert account_pinned_vm(p.mm, 5, p.cred) == 0 and status(p) == (17 * KB, 0)
    unaccount_pinned_vm(p.mm, 17)
    assert status(p) == (0, 0)


# -- io_uring fixed buffers ----------------------------------------------------------------------


def test_io_uring_charges_vmpin_and_the_users_locked_vm(k: Kernel) -> None:
    """Registration pins long-term and writable, charges the pages to the mm (VmPin) and,
    for a ring creator without CAP_IPC_LOCK, to the user's locked_vm; unregistration and
    close give it all back."""
    p = user(k)
    a = buffer(p, 8)
    ring = IoRing(k, p)
    assert k.user(1000).locked_vm == RING_PAGES
    ring.register_buffers([(a, 8 * PAGE_SIZE)])
    assert status(p) == (8 * KB, 0), "VmPin, not VmLck"
    assert k.user(1000).locked_vm == RING_PAGES + 8
    assert net_pins(k) == 8
    assert ring.write_fixed(0, 2 * PAGE_SIZE) == bytes([1]) + bytes(PAGE_SIZE - 1) + \
        bytes([2]) + bytes(PAGE_SIZE - 1)
    ring.unregister_buffers()
    assert status(p) == (0, 0) and k.user(1000).locked_vm == RING_PAGES and net_pins(k) == 0
    ring.close()
    assert k.user(1000).locked_vm == 0


def test_io_uring_over_rlimit_memlock_is_enomem_and_keeps_nothing(k: Kernel) -> None:
    """Small pages are charged per buffer (no sharing between buffers): the second buffer
    over the same pages crosses the limit, and the whole registration is undone."""
    p = user(k)
    a = buffer(p, 8)
    ring = IoRing(k, p)
    with pytest.raises(OSError) as e:
        ring.register_buffers([(a, 8 * PAGE_SIZE), (a, 8 * PAGE_SIZE)])
    assert e.value.errno == errno.ENOMEM
    assert status(p) == (0, 0) and k.user(1000).locked_vm == RING_PAGES
    assert net_pins(k) == 0 and k.sanitizer.outstanding() == []
    ring.register_buffers([(a, 4 * PAGE_SIZE), (a, 4 * PAGE_SIZE)])
    assert status(p) == (8 * KB, 0) and k.user(1000).locked_vm == RING_PAGES + 8
    ring.close()


def test_io_uring_with_cap_ipc_lock_charges_only_vmpin(k: Kernel) -> None:
    """A ring created with CAP_IPC_LOCK has no user to charge; VmPin still counts."""
    p = user(k, limit=PAGE_SIZE, caps={CAP_IPC_LOCK})
    a = buffer(p, 32)
    ring = IoRing(k, p)
    ring.register_buffers([(a, 32 * PAGE_SIZE)])
    assert status(p) == (32 * KB, 0)
    assert k.user(1000).locked_vm == 0
    ring.close()
    assert status(p) == (0, 0)


def test_io_uring_charges_a_thp_once_at_full_size(k: Kernel) -> None:
    """Large folios are charged at their full size once across all buffers; the pins are
    coalesced to one per folio and buffer."""
    p = user(k, limit=4 * PMD_SIZE)
    a = p.mmap(0, PMD_SIZE, RW, ANON)
    p.madvise(a, PMD_SIZE, MADV_HUGEPAGE)
    p.write(a, b"thp")
    folio = k.page(int(p.mm.find_vma(a).pfn[0])).folio
    assert folio.order == 9
    ring = IoRing(k, p)
    ring.register_buffers([(a + PAGE_SIZE, 3 * PAGE_SIZE), (a + 200 * PAGE_SIZE, 100)])
    assert status(p) == (512 * KB, 0)
    assert k.user(1000).locked_vm == RING_PAGES + 512
    assert folio.pincount == 2 and net_pins(k) == 2
    assert ring.write_fixed(1, 3) == bytes(3)
    ring.unregister_buffers()
    assert status(p) == (0, 0) and folio.pincount == 0


def test_users_share_one_locked_vm_budget(k: Kernel) -> None:
    """user->locked_vm is per user: a second process of the same user is refused what the
    first one used; VmPin stays per process."""
    p1, p2 = user(k), user(k)
    a1, a2 = buffer(p1, 8), buffer(p2, 8)
    r1, r2 = IoRing(k, p1), IoRing(k, p2)
    r1.register_buffers([(a1, 8 * PAGE_SIZE)])
    with pytest.raises(OSError) as e:
        r2.register_buffers([(a2, 8 * PAGE_SIZE)])
    assert e.value.errno == errno.ENOMEM
    assert status(p1) == (8 * KB, 0) and status(p2) == (0, 0)
    assert k.user(1000).locked_vm == 2 * RING_PAGES + 8
    other = user(k, uid=1001)
    r3 = IoRing(k, other)
    r3.register_buffers([(buffer(other, 8), 8 * PAGE_SIZE)])
    assert k.user(1001).locked_vm == RING_PAGES + 8
    for r in (r1, r2, r3):
        r.close()
    assert k.user(1000).locked_vm == k.user(1001).locked_vm == 0


@pytest.mark.parametrize("what", ["ext4 shared", "read-only", "hole", "empty", "over 1 GiB"])
def test_io_uring_refuses_what_cannot_be_pinned(k: Kernel, what: str) -> None:
    """Buffers must be writable and long-term pinnable, whole, and 1 byte to 1 GiB: EFAULT,
    with nothing left pinned or charged."""
    p = user(k)
    length = 4 * PAGE_SIZE
    if what == "ext4 shared":
        a = p.mmap(0, length, RW, MAP_SHARED, fd=k.fs("ext4").create("f", length))
    elif what == "read-only":
        a = p.mmap(0, length, PROT_READ, ANON)
    else:
        a = buffer(p, 4)
        if what == "hole":
            p.munmap(a + 2 * PAGE_SIZE, PAGE_SIZE)
        else:
            length = 0 if what == "empty" else (1 << 30) + 1
    ring = IoRing(k, p)
    with pytest.raises(OSError) as e:
        ring.register_buffers([(a, length)])
    assert e.value.errno == errno.EFAULT
    assert status(p) == (0, 0) and k.user(1000).locked_vm == RING_PAGES
    assert net_pins(k) == 0
    ring.close()


def test_a_registered_buffer_stays_pinned_and_charged_after_munmap(k: Kernel) -> None:
    """The ring keeps the pages (and their charge) until unregistration: what the process
    unmapped still reaches the file in a WRITE_FIXED."""
    p = user(k)
    a = buffer(p, 2)
    ring = IoRing(k, p)
    ring.register_buffers([(a, 2 * PAGE_SIZE)])
    pages: list[Page | None] = [k.page(int(x)) for x in ring.buffers[0].pfns]
    p.munmap(a, 2 * PAGE_SIZE)
    assert status(p) == (2 * KB, 0)
    assert ring.write_fixed(0, PAGE_SIZE + 1)[PAGE_SIZE:] == b"\x02"
    ring.unregister_buffers()
    assert status(p) == (0, 0)
    assert all(k.mem.kind[pg.pfn] == 0 for pg in pages if pg is not None), "freed at last"


def test_io_uring_accepts_an_empty_slot(k: Kernel) -> None:
    """(NULL, 0) is an empty slot: it pins and charges nothing."""
    p = user(k)
    a = buffer(p, 2)
    ring = IoRing(k, p)
    ring.register_buffers([(0, 0), (a, 2 * PAGE_SIZE)])
    assert status(p) == (2 * KB, 0) and net_pins(k) == 2
    ring.close()
