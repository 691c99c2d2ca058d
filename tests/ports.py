"""Loopback ports for the tests that start servers or training clusters of their own."""
from __future__ import annotations

import socket


def free_ports(n: int) -> list[int]:
    """n distinct ports free on the loopback now (all held open while choosing)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
