"""A region unmapped stays a hole for map_fixed: later maps of the scenario do not land
in it, on either back-end (scenarios/holes.py), and it still answers as unmapped."""

from __future__ import annotations

from gupsim import PAGE_SIZE
from gupsim.scenarios.holes import Holes
from gupsim.scenarios.model import ModelSystem


def test_later_maps_avoid_the_hole_and_map_fixed_takes_it() -> None:
    with ModelSystem() as system:
        p = system.spawn("p")
        r1 = p.map("anon", 4 * PAGE_SIZE, populate=True, fill=1)
        p.munmap(r1)
        views = [p.map("anon", 4 * PAGE_SIZE, populate=True, fill=2) for _ in range(3)]
        child = p.fork()
        moved = p.mremap_move(views[0], 0, PAGE_SIZE)
        assert str(p.madvise(r1, 0, PAGE_SIZE, 4)) == "ENOMEM"    # still a plain hole
        assert str(child.map_fixed(r1, 7)) == "ok"    # the child inherited the hole
        assert str(p.map_fixed(r1, 9)) == "ok"
        assert p.read(r1, 0, 1) == b"\x09" and moved is not None
        assert str(p.map_fixed(r1, 9)) == "EEXIST"    # mapped again now


def test_holes_are_forgotten_where_the_process_maps_again() -> None:
    holes = Holes()
    holes.add(0x10000, 0x4000)
    holes.add(0x20000, 0x1000)
    holes.filled(0x11000, 0x1000)
    assert holes.spans == [(0x20000, 0x21000)]
    reserved: list[tuple[int, int]] = []
    with holes.copy().kept(lambda a, n: not reserved.append((a, n)),
                           lambda a, n: reserved.remove((a, n))):
        assert reserved == [(0x20000, 0x1000)]
    assert reserved == []
