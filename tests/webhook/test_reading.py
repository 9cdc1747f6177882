"""The memo of objects already read must never change what a read returns."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from webhook.admission import annotations as keys
from webhook.model.extract import ExtractionError, to_inference_request
from webhook.admission.reading import ObjectReader
from webhook.model.schema import spec_hash

from .test_fuzz import FUZZ, PATHS, _deployment, _put, json_values
from .reviews import apply, review

# Where the apiserver and kubectl put bookkeeping that extraction never reads.
IGNORED_PATHS = [
    ("status",), ("metadata", "managedFields"), ("metadata", "resourceVersion"), ("metadata", "uid"),
    ("metadata", "generation"), ("metadata", "creationTimestamp"), ("metadata", "ownerReferences"),
]


def _outcome(read: Any, obj: Any) -> Any:
    try:
        return read(obj)
    except ExtractionError as exc:
        return ("error", str(exc))


def _fresh(obj: Any) -> Any:
    request = to_inference_request(obj)
    return request, spec_hash(request)


@FUZZ
@given(st.sampled_from(PATHS + IGNORED_PATHS), json_values, st.sampled_from(PATHS + IGNORED_PATHS), json_values)
def test_a_remembered_read_is_the_read(path: tuple[Any, ...], value: Any, other_path: tuple[Any, ...], other: Any) -> None:
    reader = ObjectReader(16)
    changed = _deployment()
    try:
        _put(changed, path, value)
    except (TypeError, IndexError, KeyError):
        return
    twice = copy.deepcopy(changed)
    try:
        _put(twice, other_path, other)
    except (TypeError, IndexError, KeyError):
        return
    # Read the original, the changed and the twice-changed object in turn, twice each: every
    # answer, remembered or not, is what reading it afresh gives.
    for obj in (_deployment(), changed, twice, _deployment(), changed, twice):
        assert _outcome(reader.read, obj) == _outcome(_fresh, obj)


def test_bookkeeping_and_our_own_annotations_do_not_defeat_the_memo() -> None:
    reader = ObjectReader(16)
    obj = _deployment()
    first = reader.read(obj)
    updated = copy.deepcopy(obj)
    updated["status"] = {"replicas": 2}
    updated["metadata"].update(resourceVersion="42", generation=3, managedFields=[{"manager": "kubectl"}])
    updated["metadata"]["annotations"] = {keys.POD_POWER_WATTS: "1.000", "kubectl.kubernetes.io/last-applied-configuration": "{}"}
    assert reader.read(updated) is first
    assert (reader.memo.hits, reader.memo.misses) == (1, 1)
    updated["metadata"]["annotations"]["team"] = "a"  # read: a new entry
    assert reader.read(updated)[0].annotations == {"team": "a"}
    assert (reader.memo.hits, reader.memo.misses) == (1, 2)


@pytest.mark.parametrize("oddity", [2**70, "\ud800"])
def test_values_msgpack_cannot_hold_are_read_without_the_memo(oddity: Any) -> None:
    reader = ObjectReader(16)
    obj = _deployment()
    obj["metadata"]["labels"] = {"odd": oddity}
    assert _outcome(reader.read, obj) == _outcome(_fresh, obj)
    assert len(reader.memo) == 0


def test_mutate_then_validate_reads_the_object_once() -> None:
    from starlette.testclient import TestClient

    from webhook.http.app import create_app
    from webhook.model.prior import PriorPredictor
    from webhook.model.service import PredictionService

    service = PredictionService(PriorPredictor())
    service.load()
    with TestClient(create_app(service)) as client:
        obj = _deployment()
        answer = client.post("/mutate", json=review(obj)).json()
        assert "patch" in answer["response"]
        mutated = apply(obj, answer)
        assert client.post("/validate", json=review(mutated)).json()["response"]["allowed"] is True
        text = client.get("/metrics").text
    assert 'energetiscope_object_read_memo_lookups{result="hit"} 1.0' in text
    assert 'energetiscope_object_read_memo_lookups{result="miss"} 1.0' in text


@pytest.mark.parametrize("where", ["labels", "annotations"])
@pytest.mark.parametrize("malformed", ["", 0, [], False])
def test_falsy_malformed_labels_still_fail_after_a_good_read(where: str, malformed: Any) -> None:
    reader = ObjectReader(16)
    reader.read(_deployment())
    obj = _deployment()
    obj["metadata"][where] = malformed
    with pytest.raises(ExtractionError, match=f"metadata.{where}: expected an object"):
        reader.read(obj)
