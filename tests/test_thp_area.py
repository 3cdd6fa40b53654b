"""One layout rule for THP-aligned areas on both back-ends (a model-only 2 MiB-aligned
mTHP area once got a PMD THP where the host's got 1 MiB folios)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gupsim.memory.units import PMD_BYTES, thp_area

ALIGNS = [16 << 10, 64 << 10, 1 << 20, PMD_BYTES]


@given(raw=st.integers(0, 1 << 40).map(lambda a: a << 12),
       pages=st.integers(1, 2048), align=st.sampled_from(ALIGNS))
def test_the_area_fits_its_reservation_and_is_aligned(raw: int, pages: int, align: int) -> None:
    length = pages << 12
    span, _ = thp_area(0, length, align)
    again, start = thp_area(raw, length, align)
    assert again == span
    assert raw <= start and start + length <= raw + span
    assert start % align == 0
    if align < PMD_BYTES:
        assert start % PMD_BYTES == align     # never on a 2 MiB boundary, wherever raw is
