"""The mutating handler's decisions, called directly (the TLS path is in test_server.py)."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from webhook.admission import annotations as keys
from webhook.admission.mutate import MutationSettings, mutate
from webhook.admission.patch import annotations_patch
from webhook.admission.review import NotAnAdmissionReview, parse_review
from webhook.model.prior import PriorPredictor
from webhook.model.service import PredictionService

from .reviews import apply, patch_of, review


@pytest.fixture
def service() -> PredictionService:
    service = PredictionService(PriorPredictor())
    service.load()
    return service


def _deployment(replicas: int = 3, cpu: str = "500m") -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "nginx", "image": "nginx", "resources": {"requests": {"cpu": cpu, "memory": "256Mi"}}}]},
            },
        },
    }


def _admit(service: PredictionService, body: dict[str, Any], settings: MutationSettings = MutationSettings()):  # type: ignore[no-untyped-def]
    return mutate(parse_review(body), service, settings)


def test_create_is_annotated_and_a_second_pass_is_a_no_op(service: PredictionService) -> None:
    obj = _deployment()
    body = review(obj)
    result = _admit(service, body)
    assert result.outcome == "patched"
    assert result.review["response"]["uid"] == body["request"]["uid"]
    assert result.review["response"]["allowed"] is True
    patch = patch_of(result.review)
    assert patch == [{"op": "add", "path": "/metadata/annotations", "value": patch[0]["value"]}]
    patched = apply(obj, result.review)
    notes = patched["metadata"]["annotations"]
    assert set(notes) == set(keys.ALL_KEYS)
    pod_watts = float(notes[keys.POD_POWER_WATTS])
    assert float(notes[keys.WORKLOAD_POWER_WATTS]) == pytest.approx(3 * pod_watts, abs=0.002)
    assert float(notes[keys.ENERGY_JOULES_PER_HOUR]) == pytest.approx(3 * pod_watts * 3600, rel=1e-3)
    assert float(notes[keys.POD_POWER_WATTS_P10]) <= pod_watts <= float(notes[keys.POD_POWER_WATTS_P90])
    assert notes[keys.BASIS] == "prior" and notes[keys.WORKLOAD_POWER_SCOPE] == "total"
    assert patched["spec"] == obj["spec"]  # the pod template is never touched
    second = _admit(service, review(patched))
    assert second.outcome == "unchanged" and patch_of(second.review) is None


def test_existing_annotations_with_slashes_are_kept(service: PredictionService) -> None:
    obj = _deployment()
    obj["metadata"]["annotations"] = {"example.com/owner": "team-a", "deployment.kubernetes.io/revision": "4"}
    result = _admit(service, review(obj))
    paths = {op["path"] for op in patch_of(result.review) or []}
    assert "/metadata/annotations/energetiscope.io~1pod-power-watts" in paths
    patched = apply(obj, result.review)
    assert patched["metadata"]["annotations"]["example.com/owner"] == "team-a"


def test_scale_only_update_changes_only_the_totals(service: PredictionService) -> None:
    annotated = apply(_deployment(replicas=3), _admit(service, review(_deployment(replicas=3))).review)
    scaled = copy.deepcopy(annotated)
    scaled["spec"]["replicas"] = 6
    result = _admit(service, review(scaled, operation="UPDATE", old=annotated))
    changed = {op["path"].rsplit("/", 1)[-1].replace("~1", "/") for op in patch_of(result.review) or []}
    assert changed == {keys.WORKLOAD_POWER_WATTS, keys.ENERGY_JOULES_PER_HOUR}
    after = apply(scaled, result.review)["metadata"]["annotations"]
    assert float(after[keys.WORKLOAD_POWER_WATTS]) == pytest.approx(2 * float(annotated["metadata"]["annotations"][keys.WORKLOAD_POWER_WATTS]), abs=0.002)


def test_cpu_change_changes_the_prediction_and_hash(service: PredictionService) -> None:
    before = apply(_deployment(), _admit(service, review(_deployment())).review)["metadata"]["annotations"]
    bigger = _deployment(cpu="2")
    after = apply(bigger, _admit(service, review(bigger, operation="UPDATE", old=_deployment())).review)["metadata"]["annotations"]
    assert after[keys.SPEC_HASH] != before[keys.SPEC_HASH]
    assert float(after[keys.POD_POWER_WATTS]) > float(before[keys.POD_POWER_WATTS])


def test_forged_annotations_are_corrected(service: PredictionService) -> None:
    honest = apply(_deployment(), _admit(service, review(_deployment())).review)
    forged = copy.deepcopy(honest)
    forged["metadata"]["annotations"][keys.POD_POWER_WATTS] = "0.001"
    result = _admit(service, review(forged, operation="UPDATE", old=honest))
    assert apply(forged, result.review)["metadata"]["annotations"] == honest["metadata"]["annotations"]


@pytest.mark.parametrize("operation", ["DELETE", "CONNECT"])
def test_delete_and_connect_get_no_patch(service: PredictionService, operation: str) -> None:
    result = _admit(service, review(None, operation=operation, old=_deployment(), kind="Deployment"))
    assert result.outcome == "skipped" and "patch" not in result.review["response"]
    assert result.review["response"]["allowed"] is True


def test_skip_label_and_owned_pods(service: PredictionService) -> None:
    skipped = _deployment()
    skipped["metadata"]["labels"]["energetiscope.io/skip"] = "true"
    assert _admit(service, review(skipped)).outcome == "skipped"
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "web-1", "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "u", "controller": True}]},
           "spec": {"containers": [{"name": "c", "image": "nginx"}]}}
    assert _admit(service, review(pod)).outcome == "skipped"
    assert _admit(service, review(pod), MutationSettings(annotate_owned_pods=True)).outcome == "patched"
    bare = copy.deepcopy(pod)
    del bare["metadata"]["ownerReferences"]
    assert _admit(service, review(bare)).outcome == "patched"


def test_daemonset_totals_are_per_node(service: PredictionService) -> None:
    ds = _deployment()
    ds["kind"] = "DaemonSet"
    del ds["spec"]["replicas"]
    notes = apply(ds, _admit(service, review(ds)).review)["metadata"]["annotations"]
    assert notes[keys.WORKLOAD_POWER_SCOPE] == "per-node"
    assert notes[keys.WORKLOAD_POWER_WATTS] == notes[keys.POD_POWER_WATTS]


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda o: o["spec"]["template"]["spec"].update(containers="nginx"), "spec.template.spec.containers: expected a list"),
        (lambda o: o["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"].update(cpu="lots"),
         "requests.cpu: 'lots' is not a valid quantity"),
        (lambda o: o["metadata"].update(annotations=["not", "a", "map"]), "metadata.annotations"),
        (lambda o: o.update(metadata="web"), "metadata: expected an object"),
    ],
)
def test_malformed_objects_are_allowed_with_a_warning(service: PredictionService, breakage: Any, message: str) -> None:
    obj = _deployment()
    breakage(obj)
    result = _admit(service, review(obj, kind="Deployment"))
    assert result.outcome == "failed_open"
    response = result.review["response"]
    assert response["allowed"] is True and "patch" not in response
    assert len(response["warnings"]) == 1 and message in response["warnings"][0]


def test_other_kinds_and_subresources_pass_untouched(service: PredictionService) -> None:
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {}}
    assert _admit(service, review(config_map)).outcome == "skipped"
    scale = {"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {"name": "web"}, "spec": {"replicas": 9}}
    body = review(scale, operation="UPDATE", kind="Deployment", subResource="scale")
    body["request"]["kind"] = {"group": "apps", "version": "v1", "kind": "Deployment"}
    assert _admit(service, body).outcome == "skipped"


def test_prediction_failure_fails_open(service: PredictionService) -> None:
    class Broken:  # fault injection: a predictor that raises, as a corrupt model might
        model_id = "broken"

        def predict(self, requests):  # type: ignore[no-untyped-def]
            raise FloatingPointError("boom")

    service._predictor = Broken()  # type: ignore[assignment]
    result = _admit(service, review(_deployment()))
    assert result.outcome == "failed_open"
    assert "prediction failed (FloatingPointError)" in result.review["response"]["warnings"][0]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "expected a JSON object"),
        ({"kind": "Deployment"}, "kind: expected 'AdmissionReview'"),
        ({"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1beta1", "request": {"uid": "x"}}, "admissionReviewVersions"),
        ({"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", "request": {"uid": ""}}, "request.uid"),
        ({"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1"}, "request: expected an object"),
    ],
)
def test_not_an_admission_review(body: Any, message: str) -> None:
    with pytest.raises(NotAnAdmissionReview, match=message):
        parse_review(body)


_VALUES = st.one_of(st.text(max_size=6), st.integers(), st.none(), st.lists(st.integers(), max_size=2),
                    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2))
_OUR_KEYS = st.sampled_from(keys.ALL_KEYS)
_ANNOTATIONS = st.one_of(
    st.just("absent"),
    st.none(),
    st.dictionaries(st.one_of(_OUR_KEYS, st.text(max_size=8)), _VALUES, max_size=12),
)


@hypothesis_settings(max_examples=300, deadline=None)
@given(current=_ANNOTATIONS, wanted=st.dictionaries(_OUR_KEYS, st.text(max_size=6), min_size=1))
def test_the_memoised_patch_is_the_whole_object_diff(current: Any, wanted: dict[str, str]) -> None:
    obj = _deployment()
    if current != "absent":
        obj["metadata"]["annotations"] = current
    mutated = copy.deepcopy(obj)
    mutated["metadata"]["annotations"] = {**(current if isinstance(current, dict) else {}), **wanted}
    expected = jsonpatch.make_patch(obj, mutated).patch
    for _ in range(2):  # computed, then from the memo
        patch = list(annotations_patch(obj["metadata"], wanted))
        assert sorted(map(repr, patch)) == sorted(map(repr, expected))
        assert jsonpatch.apply_patch(obj, patch) == mutated
