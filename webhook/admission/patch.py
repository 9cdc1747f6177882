"""The JSON patch that writes our annotations into an object: the diff from the object to its
mutated copy, computed directly from the two annotation maps.

Only the top-level ``metadata.annotations`` is patched, never the pod template, so a new model
does not roll every Deployment. The mutated copy is the object with ``wanted`` merged into its
annotations (a None value removes the key). Nothing else differs between the two, and
annotations are a flat map of strings, so their diff is one operation per key whose value
changed: ``remove`` for a key that goes, ``add`` for a new one, ``replace`` for a new value;
with no annotations at all (absent, or null) one ``add`` or ``replace`` of the whole map.
Removals come first, then additions, then replacements, each in ``wanted``'s order. These are
the operations ``jsonpatch.make_patch`` finds diffing the whole objects (it orders them by the
object's keys, and writes a value removed under one key and added under another as a ``move``);
applied, both give exactly the mutated copy (tests/webhook/test_patch.py checks this against
jsonpatch).

Why not jsonpatch itself: its diff of the annotations took ~110 us a review
(`python -m bench.mutate_stages`, "JSON patch, first time"), the largest step of a first review
after the prediction; this diff takes 2.4-5.5 us (an object already annotated, a new one), about
what the memo that used to hide jsonpatch's cost for repeated reviews took (3.8-5.1 us), so
nothing is memoised.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from webhook.admission.review import Operation

ANNOTATIONS_PATH = "/metadata/annotations"


def pointer_token(key: str) -> str:
    """``key`` as one reference token of a JSON pointer (RFC 6901: ``~`` is ``~0``, ``/`` is ``~1``)."""
    return key.replace("~", "~0").replace("/", "~1")


@functools.lru_cache(maxsize=256)  # the keys are ours, a few dozen: built once each
def annotation_path(key: str) -> str:
    """The JSON pointer to annotation ``key``."""
    return f"{ANNOTATIONS_PATH}/{pointer_token(key)}"


def annotations_patch(metadata: Mapping[str, Any], wanted: Mapping[str, str | None]) -> tuple[Operation, ...]:
    """The JSON patch from the object (whose ``metadata`` this is) to its copy with ``wanted``
    merged into its annotations (a None value removes the key, if it is there)."""
    if "annotations" not in metadata or metadata["annotations"] is None:
        # No map to patch key by key: the mutated copy's whole map is written.
        whole = {key: value for key, value in wanted.items() if value is not None}
        op = "add" if "annotations" not in metadata else "replace"
        return ({"op": op, "path": ANNOTATIONS_PATH, "value": whole},)
    current = metadata["annotations"]
    removals: list[Operation] = []
    additions: list[Operation] = []
    replacements: list[Operation] = []
    for key, value in wanted.items():
        if key in current:
            old = current[key]
            if value is None:
                removals.append({"op": "remove", "path": annotation_path(key)})
            # The new value is a string: only the same string is equal to it, as JSON and in Python
            # (an old 1, True or [] is not).
            elif old != value:
                replacements.append({"op": "replace", "path": annotation_path(key),
                                     "value": value})
        elif value is not None:
            additions.append({"op": "add", "path": annotation_path(key), "value": value})
    return (*removals, *additions, *replacements)
