"""CVE-2022-2590: a FOLL_FORCE write through /proc/PID/mem lands in a shmem file the
process may only read ("Dirty COW" for shared memory).

Run it on every era:   gupsim eras examples/eras/dirty_cow_shmem.py
(model only: the host cannot inject steps into the kernel's race window, nor does its
back-end register a userfaultfd)

The process maps a memfd read-only and private, and writes to that mapping through its
own /proc/self/mem (FOLL_FORCE | FOLL_WRITE): GUP's write fault breaks COW, giving the
process a private copy. Between that fault and GUP's second lookup (race point
"gup_slow:after_fault") the process zaps the copy (MADV_DONTNEED) and maps the memfd's
own page back with UFFDIO_CONTINUE, read-only but dirty. Before 6.0 the retry carries
FOLL_COW and takes any dirty read-only entry, so the write goes into the shared file
page; from 6.0 it takes a read-only entry only for an exclusive anonymous page, faults
again, and writes a private copy: the file is untouched.
"""

from gupsim.constants import MADV_DONTNEED

PAGE = 4096
NAME = "FOLL_FORCE write to a R/O private shmem mapping, racing UFFDIO_CONTINUE"


def scenario(system):
    app = system.spawn("app")
    buf = app.map("memfd", PAGE, writable=False, populate="read")   # R/O, private
    with app.on_race("gup_slow:after_fault"):       # after GUP's COW fault, before retry
        app.madvise(buf, 0, PAGE, MADV_DONTNEED)    # zap the private copy
        app.uffd_continue(buf, 0, PAGE)             # map the file's page: R/O, dirty
    app.proc_mem_write(app, buf, 0, b"pwned!!!")    # write via /proc/self/mem
    view = app.map_view(buf, shared=True, writable=False)
    app.read(view, 0, 8)                            # what the file holds


def expect(trace):
    """What the kernel guarantees since 6.0: a FOLL_FORCE write never reaches the file."""
    reads = [s for s in trace.steps if s.op.startswith("read")]
    if not reads or reads[-1].data == b"pwned!!!":
        return ["the FOLL_FORCE write landed in the shared memfd page (CVE-2022-2590)"]
    return []
