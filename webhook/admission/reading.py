"""Workload objects read into InferenceRequests, remembered by the bytes of what was read.

The same workload comes back again and again: /mutate and then /validate see it once each per
apply, `kubectl apply --dry-run=server` precedes the real apply, and GitOps tools re-apply every
object every few minutes. Reading it (extraction, pydantic validation, spec hash) is most of what
a review with a cached prediction costs, so its result is kept, keyed by a digest of exactly the
part of the object extraction reads (`extract.read_part`): nothing else can change the result.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import msgspec

from webhook.model.extract import from_read_part, read_part
from webhook.lru import LRUCache
from webhook.model.schema import InferenceRequest, spec_hash

ReadObject = tuple[InferenceRequest, str]  # the request and its spec hash
# msgpack, not JSON: it keeps inf apart from null, which a JSON encoding of a float would not.
_ENCODER = msgspec.msgpack.Encoder()


def _request_and_hash(part: Mapping[str, Any]) -> ReadObject:
    request = from_read_part(part)
    return request, spec_hash(request)


def read_object(obj: Mapping[str, Any], reader: ObjectReader | None = None) -> ReadObject:
    """The object's InferenceRequest and spec hash, through ``reader``'s memo when one is given;
    ExtractionError names a field it cannot read."""
    return reader.read(obj) if reader is not None else _request_and_hash(read_part(obj))


class ObjectReader:
    """Reads objects as :func:`read_object` does alone, remembering the results (failed reads are not kept)."""

    def __init__(self, max_entries: int = 4096) -> None:
        self.memo: LRUCache[bytes, ReadObject] = LRUCache(max_entries)

    def read(self, obj: Mapping[str, Any]) -> ReadObject:
        part = read_part(obj)
        if self.memo.max_entries <= 0:  # remembers nothing: no digest to compute
            return _request_and_hash(part)
        try:
            key = hashlib.blake2b(_ENCODER.encode(part), digest_size=16).digest()
        except (OverflowError, UnicodeEncodeError, TypeError):
            # Valid JSON that msgpack cannot hold (an integer beyond 64 bits, a lone surrogate).
            return _request_and_hash(part)
        found = self.memo.get(key)
        if found is None:
            found = _request_and_hash(part)
            self.memo.put(key, found)
        return found
