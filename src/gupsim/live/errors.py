"""Exceptions shared by the host back-end.

`HostUnsupported` means "this host cannot do that", not "the code is wrong": tests turn it
into a skip carrying `reason`, so a run on a smaller machine stays green and says why.
"""

from __future__ import annotations


class HostUnsupported(Exception):
    """The host kernel, its configuration or our privileges do not allow an operation."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ChildError(RuntimeError):
    """An exception raised in a child process that could not be re-created in the parent."""

    def __init__(self, message: str, child_traceback: str) -> None:
        super().__init__(f"{message}\n--- child traceback ---\n{child_traceback}")
        self.child_traceback = child_traceback
