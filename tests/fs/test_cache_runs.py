"""A write over many pages creates its page-cache folios in one go (`Inode._cache_run`):
the same cache, data, blocks and counts as one folio per page, and the same stop."""

from __future__ import annotations

import numpy as np
import pytest

import gupsim
from gupsim import PAGE_SIZE
from gupsim.fs import Ext4
from gupsim.fs.base import Inode


def _run(capacity_pages: int | None, fs_name: str) -> tuple[object, ...]:
    k = gupsim.Kernel(memory="128MiB")
    fs = (k.fs(fs_name) if capacity_pages is None
          else Ext4(k.mem, k.alloc, capacity=capacity_pages * PAGE_SIZE))
    f = fs.create("f", 8 * PAGE_SIZE)
    f.pwrite(2 * PAGE_SIZE, b"early")                    # one page cached and dirty
    raised = ""
    try:
        done = f.pwrite(100, bytes(range(256)) * 160)      # 10 pages, past the size
    except OSError as exc:
        done, raised = -1, exc.strerror or ""
    cache = sorted(f.inode.cache)
    heads = np.array([f.inode.cache[i] for i in cache], dtype=np.int64)
    return (done, raised, cache, f.pread(0, 12 * PAGE_SIZE), f.size, fs.used_pages,
            k.mem.flags[heads].tolist(), k.mem.refcount[heads].tolist(),
            k.mem.index[heads].tolist(), k.alloc.nr_free_pages(), k.check())


@pytest.mark.parametrize("fs_name, capacity", [("ext4", None), ("ext4", 6), ("ext4", 1),
                                                ("tmpfs", None)])
def test_a_long_write_caches_what_one_folio_per_page_caches(
        monkeypatch: pytest.MonkeyPatch, fs_name: str, capacity: int | None) -> None:
    made: list[int] = []
    real = Inode._cache_run

    def counted(self: Inode, first: int, last: int) -> None:
        before = len(self.cache)
        real(self, first, last)
        made.append(len(self.cache) - before)

    monkeypatch.setattr(Inode, "_cache_run", counted)
    fast = _run(capacity, fs_name)
    monkeypatch.setattr(Inode, "_cache_run", lambda self, first, last: None)
    assert _run(capacity, fs_name) == fast
    assert fast[-1] == []
    if fs_name == "ext4" and capacity is None:
        assert max(made) == 10, "the shortcut was not taken: the test compares nothing"
