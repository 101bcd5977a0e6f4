"""Raw-socket HTTP helpers for the tests that play slow or stalled clients."""

from __future__ import annotations

import contextlib
import socket


def status_of(sock: socket.socket) -> int | None:
    """The status of the HTTP/1.1 answer on ``sock`` (None: closed without one)."""
    data = b""
    with contextlib.suppress(OSError):
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return int(data.split()[1]) if data.startswith(b"HTTP/1.1 ") else None
