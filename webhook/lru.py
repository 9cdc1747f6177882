"""A bounded, thread-safe least-recently-used map with hit and miss counts."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRUCache(Generic[K, V]):
    """At most ``max_entries`` entries (0 keeps none); the least recently used goes first."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: K, count_miss: bool = True) -> V | None:
        with self._lock:
            value = self._entries.get(key)
            if value is None:
                # A caller that looks first and computes after (PredictionService.cached) counts
                # its miss once, where it computes.
                self.misses += count_miss
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return value

    def record_miss(self) -> None:
        """A miss found by a caller that looked with ``count_miss=False`` and computed elsewhere."""
        with self._lock:
            self.misses += 1

    def put(self, key: K, value: V) -> None:
        if self.max_entries <= 0:
            return
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
