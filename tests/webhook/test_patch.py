"""The annotations patch (`webhook.admission.patch`), with jsonpatch as the oracle: applied to the
object, the patch gives exactly its mutated copy, and it holds jsonpatch's own diff's operations
wherever jsonpatch does not turn a removal and an addition of one value into a move."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from webhook.admission import annotations as keys
from webhook.admission.patch import annotations_patch, pointer_token

ABSENT = "absent"

# Keys with the characters a JSON pointer escapes, and prefixes of one another.
_KEYS = st.one_of(
    st.sampled_from(keys.ALL_KEYS),
    st.sampled_from(["a/b", "a~b", "~1", "~0", "/", "~", "a/~b", "a~1b", "example.com/owner", ""]),
    st.text(alphabet="ab/~.-", max_size=6),
)
# What the object may hold: malformed values too (the apiserver sends strings; forged or broken
# objects can hold anything JSON).
_OLD_VALUES = st.one_of(st.text(max_size=4), st.sampled_from(["1.000", "model", ""]), st.integers(-1, 1),
                        st.booleans(), st.none(), st.floats(allow_nan=False, allow_infinity=False, width=16),
                        st.lists(st.integers(0, 2), max_size=2),
                        st.dictionaries(st.text(max_size=2), st.integers(), max_size=2))
_CURRENT = st.one_of(st.just(ABSENT), st.none(), st.dictionaries(_KEYS, _OLD_VALUES, max_size=10))
# What the webhook wants: strings, or None to remove the key.
_WANTED = st.dictionaries(_KEYS, st.one_of(st.none(), st.text(max_size=4), st.sampled_from(["1.000", "model", ""])),
                          max_size=10)


def _object(current: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": "apps/v1", "kind": "Deployment",
                           "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
                           "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "c"}]}}}}
    if current != ABSENT:
        obj["metadata"]["annotations"] = current
    return obj


def _mutated(obj: dict[str, Any], wanted: dict[str, str | None]) -> dict[str, Any]:
    """The object with `wanted` merged into its annotations, None removing a key: written
    independently of the module under test."""
    mutated = copy.deepcopy(obj)
    notes = dict(mutated["metadata"].get("annotations") or {})
    for key, value in wanted.items():
        if value is None:
            notes.pop(key, None)
        else:
            notes[key] = value
    mutated["metadata"]["annotations"] = notes
    return mutated


def _json(value: Any) -> str:
    # == says 1 == True == 1.0; JSON does not.
    return json.dumps(value, sort_keys=True)


@hypothesis_settings(max_examples=600, deadline=None)
@given(current=_CURRENT, wanted=_WANTED)
def test_the_patch_applied_gives_exactly_the_mutated_object(current: Any, wanted: dict[str, str | None]) -> None:
    obj = _object(current)
    before = copy.deepcopy(obj)
    mutated = _mutated(obj, wanted)
    patch = list(annotations_patch(obj["metadata"], wanted))
    assert obj == before  # computing the patch changes nothing
    assert _json(jsonpatch.apply_patch(obj, patch)) == _json(mutated)
    # Never anything outside the annotations, and one operation per key at most.
    assert all(op["path"] == "/metadata/annotations" or op["path"].startswith("/metadata/annotations/")
               for op in patch)
    assert len({op["path"] for op in patch}) == len(patch)
    # Applied again to the mutated object, the diff is empty: re-applied objects are unchanged.
    assert annotations_patch(mutated["metadata"], wanted) == ()


@hypothesis_settings(max_examples=600, deadline=None)
@given(current=_CURRENT, wanted=_WANTED)
def test_the_patch_is_jsonpatchs_diff_of_the_whole_objects(current: Any, wanted: dict[str, str | None]) -> None:
    obj = _object(current)
    mutated = _mutated(obj, wanted)
    expected = jsonpatch.make_patch(obj, mutated).patch
    patch = list(annotations_patch(obj["metadata"], wanted))
    notes = current if isinstance(current, dict) else {}
    removed = {_json(notes[key]) for key, value in wanted.items() if value is None and key in notes}
    added = {_json(value) for key, value in wanted.items() if value is not None and key not in notes}
    if removed & added:
        # jsonpatch writes a value removed under one key and added under another as a move.
        assert any(op["op"] == "move" for op in expected)
    else:
        # The same operations; jsonpatch orders them by the object's keys, this patch by `wanted`'s
        # (the operations touch distinct keys, so their order does not change the result).
        assert sorted(map(_json, patch)) == sorted(map(_json, expected))


def test_keys_are_escaped_as_json_pointer_tokens() -> None:
    assert pointer_token("a/b~c") == "a~1b~0c"
    assert pointer_token("~1") == "~01"  # ~ first: "~1" is not read back as "/"
    obj = _object({"keep": "x", "a/b": "old", "~1": "gone"})
    patch = annotations_patch(obj["metadata"], {"a/b": "new", "~1": None, "x~y/z": "v"})
    assert patch == (
        {"op": "remove", "path": "/metadata/annotations/~01"},
        {"op": "add", "path": "/metadata/annotations/x~0y~1z", "value": "v"},
        {"op": "replace", "path": "/metadata/annotations/a~1b", "value": "new"},
    )
    assert jsonpatch.apply_patch(obj, list(patch))["metadata"]["annotations"] == {"keep": "x", "a/b": "new",
                                                                                  "x~y/z": "v"}


def test_absent_and_null_annotations_are_written_whole() -> None:
    wanted = {keys.MODEL: "m", keys.BASIS: "model", keys.SPEC_HASH: None}
    absent = _object(ABSENT)
    assert annotations_patch(absent["metadata"], wanted) == (
        {"op": "add", "path": "/metadata/annotations", "value": {keys.MODEL: "m", keys.BASIS: "model"}},)
    null = _object(None)
    assert annotations_patch(null["metadata"], wanted) == (
        {"op": "replace", "path": "/metadata/annotations", "value": {keys.MODEL: "m", keys.BASIS: "model"}},)


def test_only_changed_keys_are_patched() -> None:
    obj = _object({keys.MODEL: "m", keys.BASIS: "prior", keys.SPEC_HASH: "h", "team": "a"})
    patch = annotations_patch(obj["metadata"], {keys.MODEL: "m", keys.BASIS: "model", keys.SPEC_HASH: None,
                                                keys.RUN_BOUND: None})
    assert patch == ({"op": "remove", "path": "/metadata/annotations/energetiscope.io~1spec-hash"},
                     {"op": "replace", "path": "/metadata/annotations/energetiscope.io~1basis", "value": "model"})


def test_a_value_of_another_json_type_is_replaced() -> None:
    # A forged or broken object: 1 and True, or [] and "", are not the string the webhook writes.
    for old in (1, True, None, [], {}, 1.5):
        obj = _object({keys.MODEL: old})
        assert annotations_patch(obj["metadata"], {keys.MODEL: "1"}) == (
            {"op": "replace", "path": "/metadata/annotations/energetiscope.io~1model", "value": "1"},)
