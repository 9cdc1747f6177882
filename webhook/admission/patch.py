"""The JSON patch that writes our annotations into an object, memoised.

Only the top-level ``metadata.annotations`` is patched, never the pod template, so a new model
does not roll every Deployment. The patch is jsonpatch's diff of the annotations, and depends
only on our keys' old and new values, so it is memoised: a spec's reviews repeat.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, Literal

import jsonpatch

from webhook.admission.review import Operation


def annotations_patch(metadata: Mapping[str, Any], wanted: Mapping[str, str | None]) -> tuple[Operation, ...]:
    """The JSON patch from the object to its copy with ``wanted`` merged into its annotations
    (a None value removes the key, if it is there).

    jsonpatch diffs the annotations alone, in their place so the paths are the object's own:
    nothing else changes, and diffing the whole object costs ~100x more. Annotations other than
    ``wanted``'s keys are the same on both sides and cannot appear in the diff, so diffing just
    the object's values at those keys gives the same patch. That makes the patch a function of
    a few strings, memoised because a spec's reviews repeat (the diff takes ~100 us).
    """
    key = patch_key(metadata, wanted)
    try:
        return _projected_patch(*key)
    except TypeError:  # a malformed, unhashable value at one of our keys: diff it unmemoised
        return _projected_patch.__wrapped__(*key)


AnnotationsState = Literal["absent", "null", "object"]
PatchKey = tuple[AnnotationsState, tuple[tuple[str, Any], ...], tuple[tuple[str, str | None], ...]]


def patch_key(metadata: Mapping[str, Any], wanted: Mapping[str, str | None]) -> PatchKey:
    """All the patch depends on: whether annotations exist, our keys' old values, the new ones."""
    if "annotations" not in metadata:
        state: AnnotationsState = "absent"
    elif metadata["annotations"] is None:
        state = "null"
    else:
        state = "object"
    current = metadata.get("annotations") or {}
    return state, tuple((key, current[key]) for key in wanted if key in current), tuple(wanted.items())


@functools.lru_cache(maxsize=4096)
def _projected_patch(
    state: AnnotationsState, ours: tuple[tuple[str, Any], ...], wanted: tuple[tuple[str, str | None], ...]
) -> tuple[Operation, ...]:
    if state == "absent":
        before: dict[str, Any] = {"metadata": {}}
    else:
        before = {"metadata": {"annotations": None if state == "null" else dict(ours)}}
    merged = {**dict(ours), **dict(wanted)}
    after = {"metadata": {"annotations": {k: v for k, v in merged.items() if v is not None}}}
    return tuple(jsonpatch.make_patch(before, after).patch)


def unmemoised_patch(metadata: Mapping[str, Any], wanted: Mapping[str, str | None]) -> tuple[Operation, ...]:
    """:func:`annotations_patch` with the diff forced (what a first review of a spec costs)."""
    return _projected_patch.__wrapped__(*patch_key(metadata, wanted))
