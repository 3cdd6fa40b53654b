# Generated from gupsim.gup.entry.ENTRY_POINTS; do not edit. Renew with:
#   python -c "from gupsim.gup.entry import write_stubs; write_stubs()"
# Read by type checkers only (see gup/api.py and gup/facade.py).

from ..memory import Page, PageArray
from ..mm import MM

__all__ = [
    "get_user_pages",
    "get_user_pages_remote",
    "get_user_pages_unlocked",
    "get_user_pages_fast",
    "get_user_pages_fast_only",
    "get_user_page_fast_only",
    "pin_user_pages",
    "pin_user_pages_remote",
    "pin_user_pages_unlocked",
    "pin_user_pages_fast",
    "pin_longterm_pages",
    "pin_longterm_pages_fast",
    "pin_longterm_pages_remote",
]


def get_user_pages(
    start: int,
    nr_pages: int,
    gup_flags: int,
    pages: list[Page | None] | PageArray | None,
) -> int: ...

def get_user_pages_remote(
    mm: MM,
    start: int,
    nr_pages: int,
    gup_flags: int,
    pages: list[Page | None] | PageArray | None,
    locked: list[int] | None,
) -> int: ...

def get_user_pages_unlocked(
    start: int,
    nr_pages: int,
    pages: list[Page | None] | PageArray | None,
    gup_flags: int,
) -> int: ...

def get_user_pages_fast(
    start: int,
    nr_pages: int,
    gup_flags: int,
    pages: list[Page | None] | PageArray | None,
) -> int: ...

def get_user_pages_fast_only(
    start: int,
    nr_pages: int,
    gup_flags: int,
    pages: list[Page | None] | PageArray | None,
) -> int: ...

def get_user_page_fast_only(
    addr: int,
    gup_flags: int,
    pagep: list[Page | None],
) -> bool: ...

def pin_user_pages(
    start: int,
    nr_pages: int,
    gup_flags: int,
    pages: list[Page | None] | PageArray | None,
) -> int: ...

def pin_user_pages_remote(
    mm: MM,
    start: int,
    nr_pages: int,
    gup_flags: int,
    pages: list[Page | None] | PageArray | None,
    locked: list[int] | None,
) -> int: ...

def pin_user_pages_unlocked(
    start: int,
    nr_pages: int,
    pages: list[Page | None] | PageArray | None,
    gup_flags: int,
) -> int: ...

def pin_user_pages_fast(
    start: int,
    nr_pages: int,
    gup_flags: int,
    pages: list[Page | None] | PageArray | None,
) -> int: ...

def pin_longterm_pages(
    start: int,
    nr_pages: int,
    gup_flags: int,
    pages: list[Page | None] | PageArray | None,
) -> int: ...

def pin_longterm_pages_fast(
    start: int,
    nr_pages: int,
    gup_flags: int,
    pages: list[Page | None] | PageArray | None,
) -> int: ...

def pin_longterm_pages_remote(
    mm: MM,
    start: int,
    nr_pages: int,
    gup_flags: int,
    pages: list[Page | None] | PageArray | None,
    locked: list[int] | None,
) -> int: ...


class ProcessEntryPoints:
    def get_user_pages(
        self,
        start: int,
        nr_pages: int,
        gup_flags: int,
        pages: list[Page | None] | PageArray | None,
    ) -> int: ...

    def get_user_pages_unlocked(
        self,
        start: int,
        nr_pages: int,
        pages: list[Page | None] | PageArray | None,
        gup_flags: int,
    ) -> int: ...

    def get_user_pages_fast(
        self,
        start: int,
        nr_pages: int,
        gup_flags: int,
        pages: list[Page | None] | PageArray | None,
    ) -> int: ...

    def get_user_pages_fast_only(
        self,
        start: int,
        nr_pages: int,
        gup_flags: int,
        pages: list[Page | None] | PageArray | None,
    ) -> int: ...

    def get_user_page_fast_only(
        self,
        addr: int,
        gup_flags: int,
        pagep: list[Page | None],
    ) -> bool: ...

    def pin_user_pages(
        self,
        start: int,
        nr_pages: int,
        gup_flags: int,
        pages: list[Page | None] | PageArray | None,
    ) -> int: ...

    def pin_user_pages_unlocked(
        self,
        start: int,
        nr_pages: int,
        pages: list[Page | None] | PageArray | None,
        gup_flags: int,
    ) -> int: ...

    def pin_user_pages_fast(
        self,
        start: int,
        nr_pages: int,
        gup_flags: int,
        pages: list[Page | None] | PageArray | None,
    ) -> int: ...

    def pin_longterm_pages(
        self,
        start: int,
        nr_pages: int,
        gup_flags: int,
        pages: list[Page | None] | PageArray | None,
    ) -> int: ...

    def pin_longterm_pages_fast(
        self,
        start: int,
        nr_pages: int,
        gup_flags: int,
        pages: list[Page | None] | PageArray | None,
    ) -> int: ...


class KernelEntryPoints:
    def get_user_pages_remote(
        self,
        mm: MM,
        start: int,
        nr_pages: int,
        gup_flags: int,
        pages: list[Page | None] | PageArray | None,
        locked: list[int] | None,
    ) -> int: ...

    def pin_user_pages_remote(
        self,
        mm: MM,
        start: int,
        nr_pages: int,
        gup_flags: int,
        pages: list[Page | None] | PageArray | None,
        locked: list[int] | None,
    ) -> int: ...

    def pin_longterm_pages_remote(
        self,
        mm: MM,
        start: int,
        nr_pages: int,
        gup_flags: int,
        pages: list[Page | None] | PageArray | None,
        locked: list[int] | None,
    ) -> int: ...
