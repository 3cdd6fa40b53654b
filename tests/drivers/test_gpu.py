"""GPU host memory registration: all-or-nothing long-term pins, and the fallback misuse.

The misuse (pin, fall back to get_user_pages(), release everything with
unpin_user_page()) must be caught by the sanitizer with both driver lines named before
the refcount underflows; its concrete damage in the model is a still-mapped page freed.
"""

from __future__ import annotations

from drivers_helpers import ANON, RW, anon_buffer, held, line_in, mapped_pfn

from gupsim import EFAULT, MAP_FIXED, MAP_SHARED, PAGE_SIZE, Kernel, Process
from gupsim.drivers import gpu
from gupsim.drivers.gpu import (
    GpuDevice,
    gpu_host_register,
    gpu_host_register_with_fallback,
    gpu_host_unregister,
    gpu_host_unregister_all_unpin,
    gpu_host_unregister_fixed,
)


def anon_then_ext4(k: Kernel, p: Process) -> tuple[int, int]:
    """8 anonymous pages followed by 4 pages of a MAP_SHARED ext4 file, all written."""
    a = p.mmap(0, 8 * PAGE_SIZE, RW, ANON)
    f = k.fs("ext4").create("weights", 4 * PAGE_SIZE)
    p.mmap(a + 8 * PAGE_SIZE, 4 * PAGE_SIZE, RW, MAP_SHARED | MAP_FIXED, fd=f)
    p.write(a, b"w" * 12 * PAGE_SIZE)
    return a, mapped_pfn(p, a + 8 * PAGE_SIZE)


def test_registration_pins_long_term_and_the_gpu_reaches_the_process(
        k: Kernel, p: Process) -> None:
    """All pages pinned (one call), the GPU's writes are the process's data, and the
    release dirties and unpins everything."""
    a = anon_buffer(p, 4)
    dev = GpuDevice(k)
    region = gpu_host_register(dev, a + 10, 3 * PAGE_SIZE, current=p)
    assert not isinstance(region, int) and region.npinned == 4 and held(k) == 4
    dev.dma_write(region, PAGE_SIZE, b"gpu")
    assert p.read(a + 10 + PAGE_SIZE, 3) == b"gpu"
    assert dev.dma_read(region, 0, 2) == b"uu"
    gpu_host_unregister(region)
    assert held(k) == 0 and k.sanitizer.reports == [] and dev.regions == []
    gpu_host_unregister(region)
    assert "gpu_host_unregister: released twice" in k.warnings.sites()


def test_registration_that_cannot_pin_everything_fails_with_nothing_held() -> None:
    """Writable long-term pins stop at the ext4 shared mapping: the 8 pins taken are
    released and the registration answers -EFAULT."""
    k = Kernel(memory="64MiB", debug=True)
    p = k.spawn("app")
    a, _ = anon_then_ext4(k, p)
    assert gpu_host_register(GpuDevice(k), a, 12 * PAGE_SIZE, current=p) == -EFAULT
    assert k.vmstat["nr_foll_pin_acquired"] == 8 and held(k) == 0
    assert k.sanitizer.outstanding() == [] and k.sanitizer.reports == []


def test_the_fallback_misuse_is_reported_at_both_driver_lines_before_the_underflow() -> None:
    """Pin 8, get 4, unpin 12: four unpin_of_get reports, each naming the
    get_user_pages() line and the release line in drivers/gpu.py, all recorded before
    the first refcount underflow warning; the still-mapped file page is then freed."""
    k = Kernel(memory="64MiB")              # no debug: the misuse corrupts counts
    p = k.spawn("app")
    a, file_pfn = anon_then_ext4(k, p)
    dev = GpuDevice(k)
    region = gpu_host_register_with_fallback(dev, a, 12 * PAGE_SIZE, current=p)
    assert not isinstance(region, int) and (region.npinned, region.nget) == (8, 4)
    assert k.page(file_pfn).refcount == 3            # page cache + mapping + GET
    reports_at_underflow: list[int] = []
    warn = k.warnings.warn_on_once

    def spy(condition: bool, site: str, message: str = "") -> bool:
        if condition and site == "gup_put_folio: refcount underflow":
            reports_at_underflow.append(len(k.sanitizer.reports))
        return warn(condition, site, message)

    k.warnings.warn_on_once = spy                     # type: ignore[method-assign]
    gpu_host_unregister_all_unpin(region)
    taken = line_in(gpu, gpu.gpu_host_register_with_fallback, "current.get_user_pages(")
    released = line_in(gpu, gpu.gpu_host_unregister_all_unpin, "k.unpin_user_pages(")
    reports = k.sanitizer.reports
    assert [r.kind for r in reports] == ["unpin_of_get"] * 4
    for r in reports:
        assert r.taken_at.endswith(f"drivers/gpu.py:{taken} in "
                                   "gpu_host_register_with_fallback"), r.taken_at
        assert r.released_at.endswith(f"drivers/gpu.py:{released} in "
                                      "gpu_host_unregister_all_unpin"), r.released_at
    assert reports_at_underflow and reports_at_underflow[0] >= 1, \
        "the sanitizer reported before the refcount went below zero"
    assert "gup_put_folio: refcount underflow" in k.warnings.sites()
    assert any("mapped but not allocated" in v for v in k.check())


def test_the_fixed_release_puts_the_references_and_leaves_counts_whole() -> None:
    """Releasing the GET entries with put_page() (after dirtying): no report, the file
    page back to its cache and mapping references, dirty."""
    k = Kernel(memory="64MiB", debug=True)
    p = k.spawn("app")
    a, file_pfn = anon_then_ext4(k, p)
    region = gpu_host_register_with_fallback(GpuDevice(k), a, 12 * PAGE_SIZE, current=p)
    assert not isinstance(region, int)
    k.fs("ext4").open("weights").writeback()
    gpu_host_unregister_fixed(region)
    assert k.sanitizer.reports == [] and held(k) == 0
    page = k.page(file_pfn)
    assert page.refcount == 2 and page.folio.dirty and k.check() == []


def test_the_misuse_without_a_fallback_needed_is_harmless(k: Kernel, p: Process) -> None:
    """When every page pins, the fallback driver holds only pins and its release is right."""
    a = anon_buffer(p, 3)
    region = gpu_host_register_with_fallback(GpuDevice(k), a, 3 * PAGE_SIZE, current=p)
    assert not isinstance(region, int) and region.nget == 0
    gpu_host_unregister_all_unpin(region)
    assert k.sanitizer.reports == [] and held(k) == 0
