"""The wire format between the orchestrator and a scenario process on the host.

A frame is an 8-byte little-endian length and a pickle of that many bytes; descriptors
(a forked server's end of a new socketpair) travel with the header as SCM_RIGHTS.
A request is `(operation name, primitive arguments as a dict)`; a reply is one of
`("ok", value)`, `("os", errno, message)`, `("fault", signal name, address, why)` or
`("exc", exception or its text, traceback)`.
"""

from __future__ import annotations

import os
import pickle
import socket
import struct
from typing import Any

_LEN = struct.Struct("<Q")
MAX_FDS = 4   # descriptors accepted with one frame


def send(sock: socket.socket, obj: object, fds: list[int] | None = None) -> None:
    """Send one frame (and `fds` with its header)."""
    payload = pickle.dumps(obj)
    header = _LEN.pack(len(payload))
    if fds:
        sent = socket.send_fds(sock, [header], fds)
        sock.sendall(header[sent:] + payload)
    else:
        sock.sendall(header + payload)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def recv(sock: socket.socket) -> tuple[Any, list[int]]:
    """One frame and the descriptors that came with its header; EOFError at end."""
    header, fds = b"", []
    while len(header) < _LEN.size:
        data, got, _, _ = socket.recv_fds(sock, _LEN.size - len(header), MAX_FDS)
        if not data:
            for fd in got:
                os.close(fd)
            raise EOFError
        header += data
        fds += got
    (n,) = _LEN.unpack(header)
    return pickle.loads(_recv_exact(sock, n)), fds
