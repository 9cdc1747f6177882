"""The HTTP protocol the webhook listens with: uvicorn's httptools protocol, one write per answer.

uvicorn writes a response as two transport writes, the status line and headers, then the body.
Over TLS each write is its own TLS record and its own ``write`` system call, and the client is
woken twice for one answer (``strace -c`` on a loaded server: 2.0 writes and 1.0 reads a
review). Here the head of a response is held back and goes out with the first write after it,
which uvicorn makes straight away for a response with a body: one record, one system call, one
wake-up of the client. Nothing is reordered or lost: held bytes go out before anything written
after them, before the connection closes, and, if no body follows at once (a streaming
response that waits between its head and its first chunk, ``100 Continue``), at the loop's
next turn.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_RESPONSE_HEAD = b"HTTP/"


class HeadHoldingTransport:
    """A transport that holds a write starting with a status line until the next write.

    Everything else is the wrapped transport's (``__getattr__``); closing flushes first.
    """

    __slots__ = ("_transport", "_loop", "_held")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + bytes(data))
        elif bytes(data[:5]) == _RESPONSE_HEAD:
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def writelines(self, chunks: Any) -> None:
        self.write(b"".join(chunks))

    def flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def get_write_buffer_size(self) -> int:
        return len(self._held or b"") + self._transport.get_write_buffer_size()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class ReviewHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol writing each answer's head and body at once."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(HeadHoldingTransport(transport, self.loop))  # type: ignore[arg-type]
