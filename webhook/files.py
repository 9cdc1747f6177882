"""Notice when a file on disk has been replaced or rewritten."""

from __future__ import annotations

import os
from pathlib import Path

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
