"""Files on disk: written atomically, noticed when replaced or rewritten, and read as UTF-8 text
with an error that says which file and line is not.

Atomic writes: a reader (the webhook reloading a model, a certificate, a policy) sees the old
file or the whole new one, never half of one. The data goes to a temporary file in the target's
directory (same filesystem, so the rename is atomic), is flushed to disk, and then replaces the
target. Every writer in the project (artifacts, model cards, datasets, certificates) uses this one.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path


class NotUtf8Error(ValueError):
    """A file that is not UTF-8 text; the message names the file, the line and the byte."""


def utf8_text(data: bytes, name: str) -> str:
    """`data` decoded as UTF-8, a leading byte-order mark dropped (a spreadsheet's or an editor's).
    Latin-1 or UTF-16 (what Windows PowerShell's `>` writes) raise `NotUtf8Error` naming `name`."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise NotUtf8Error(f"{name}: not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); "
                           f"save it as UTF-8") from None


STDIN_NAME = "<stdin>"


def stdin_text() -> str:
    """Standard input, whole, as `utf8_text` reads a file: what a pipe from PowerShell (UTF-16)
    or a Latin-1 file sends is a `NotUtf8Error` naming `<stdin>`, not a traceback."""
    return utf8_text(sys.stdin.buffer.read(), STDIN_NAME)


def write_atomically(path: str | os.PathLike[str], write: Callable[[Path], None], *, mode: int | None = None) -> Path:
    """Call `write(temporary_path)`, then move the written file onto `path`; return `path`.
    `mode` sets the file's permissions before it becomes visible (the temporary file is 0600)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(handle)
    temp_path = Path(temp_name)
    try:
        write(temp_path)
        with open(temp_path, "rb") as written:
            os.fsync(written.fileno())
        if mode is not None:
            os.chmod(temp_path, mode)
        os.replace(temp_path, target)
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise
    return target


def write_text_atomically(path: str | os.PathLike[str], text: str) -> Path:
    return write_atomically(path, lambda temp: temp.write_text(text, encoding="utf-8"))


def write_bytes_atomically(path: str | os.PathLike[str], data: bytes, *, mode: int | None = None) -> Path:
    return write_atomically(path, lambda temp: temp.write_bytes(data), mode=mode)

# (mtime, size, inode): a ConfigMap or Secret update swaps a symlink, changing the inode;
# an in-place rewrite changes mtime or size.
Stamp = tuple[int, int, int]


class WatchedFile:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._seen: Stamp | None = None

    def _stamp(self) -> Stamp | None:
        if self.path is None:
            return None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def changed(self) -> bool:
        return self.path is not None and self._stamp() != self._seen

    def mark_seen(self) -> None:
        self._seen = self._stamp()
