"""Files on disk: written atomically, and noticed when replaced or rewritten.

Atomic writes: a reader (the webhook reloading a model, a certificate, a policy) sees the old
file or the whole new one, never half of one. The data goes to a temporary file in the target's
directory (same filesystem, so the rename is atomic), is flushed to disk, and then replaces the
target. Every writer in the project (artifacts, model cards, datasets, certificates) uses this one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


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
