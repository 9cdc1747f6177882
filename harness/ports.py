"""Free loopback ports for the servers the harnesses start."""

from __future__ import annotations

import socket


def free_loopback_port() -> int:
    """A port nothing listens on now (another process may still take it before we do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
