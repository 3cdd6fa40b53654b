"""`PageArray.filled()`: the entries a GUP call returned, as pages, for a driver to release."""

from __future__ import annotations

import pytest

from gupsim import MAP_ANONYMOUS, MAP_PRIVATE, PAGE_SIZE, PROT_READ, PROT_WRITE, Kernel, PageArray


def test_filled_is_what_gup_returned_and_refuses_a_null() -> None:
    k = Kernel(memory="64MiB")
    p = k.spawn("app")
    buf = p.mmap(0, 4 * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
    p.write(buf, b"x" * 4 * PAGE_SIZE)
    pages = PageArray(6)
    assert p.get_user_pages_fast(buf, 4, 0, pages) == 4
    got = pages.filled(4)
    assert [pg.pfn for pg in got] == [int(x) for x in pages.pfns[:4]]
    assert [pg.pfn for pg in pages[1:3].filled()] == [pg.pfn for pg in got[1:3]]
    with pytest.raises(RuntimeError, match="entry 4 is NULL"):
        pages.filled()
    for pg in got:
        k.put_page(pg)
