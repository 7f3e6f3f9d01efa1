"""Loopback ports for servers the tests start, and for ones that must not answer."""

from __future__ import annotations

import socket


def free_port() -> int:
    """Returns a loopback TCP port that was free a moment ago (nothing listens on it now)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
