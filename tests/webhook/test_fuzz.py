"""Property-based attacks on every endpoint: never a 500, never an invalid AdmissionReview.

In-process through the ASGI app so hypothesis can try many inputs quickly; the same app
serves over TLS in test_server.py.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch
import msgspec
import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st
import warnings

with warnings.catch_warnings():  # Starlette nudges towards httpx2; httpx is what the project uses
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from webhook.http.app import create_app
from webhook.http.state import AppSettings, app_state
from webhook.model.prior import PriorPredictor
from webhook.model.service import PredictionService

from .reviews import patch_of, review


def _app():  # type: ignore[no-untyped-def]
    service = PredictionService(PriorPredictor())
    service.load()
    app = create_app(service, AppSettings(max_body_bytes=256 * 1024))
    app_state(app).tls_ready = True
    return app


APP = _app()
CLIENT = TestClient(APP, raise_server_exceptions=False)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

scalars = st.one_of(
    # JSON has no NaN or Infinity, so no apiserver can send them: see test_json_constants_are_refused.
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20), st.sampled_from(["500m", "1Gi", "1e3", ".5", "-1", "abc", "1E", "2k", "", "∞", "1e999999999"]),
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=30,
)
# Places in a Deployment where real clients put things, each replaced by anything at all.
PATHS = [
    ("metadata",), ("metadata", "labels"), ("metadata", "annotations"), ("metadata", "ownerReferences"),
    ("spec",), ("spec", "replicas"), ("spec", "template"), ("spec", "template", "spec"),
    ("spec", "template", "spec", "containers"), ("spec", "template", "spec", "initContainers"),
    ("spec", "template", "spec", "volumes"), ("spec", "template", "spec", "nodeSelector"),
    ("spec", "template", "spec", "resources"), ("spec", "template", "spec", "containers", 0),
    ("spec", "template", "spec", "containers", 0, "resources"),
    ("spec", "template", "spec", "containers", 0, "resources", "requests"),
    ("spec", "template", "spec", "containers", 0, "resources", "requests", "cpu"),
    ("spec", "template", "spec", "containers", 0, "resources", "limits", "memory"),
    ("spec", "template", "spec", "containers", 0, "resources", "limits", "nvidia.com/gpu"),
    ("spec", "template", "spec", "containers", 0, "command"),
    ("spec", "template", "spec", "containers", 0, "image"),
]


def _deployment() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"replicas": 2, "template": {"spec": {"containers": [
            {"name": "c", "image": "nginx", "command": ["nginx"], "resources": {"requests": {"cpu": "100m"}, "limits": {"memory": "1Gi"}}}]}}},
    }


def _put(obj: Any, path: tuple[Any, ...], value: Any) -> None:
    for key in path[:-1]:
        obj = obj[key]
    obj[path[-1]] = value


def _assert_valid_answer(body: dict[str, Any], obj: Any, response: Any) -> None:
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
    assert answer["response"]["uid"] == body["request"]["uid"]
    assert isinstance(answer["response"]["allowed"], bool)
    for warning in answer["response"].get("warnings", []):
        assert isinstance(warning, str) and warning
    patch = patch_of(answer)
    if patch:
        assert all(op["path"].startswith("/metadata/annotations") for op in patch)
        jsonpatch.apply_patch(copy.deepcopy(obj), patch)


@FUZZ
@given(st.sampled_from(PATHS), json_values, st.sampled_from(["/mutate", "/validate"]), st.sampled_from(["CREATE", "UPDATE"]))
def test_any_value_anywhere_in_a_workload(path: tuple[Any, ...], value: Any, endpoint: str, operation: str) -> None:
    obj = _deployment()
    _put(obj, path, value)
    body = review(obj, operation=operation, kind="Deployment")
    _assert_valid_answer(body, obj, CLIENT.post(endpoint, json=body))


@FUZZ
@given(json_values, st.sampled_from(["Pod", "Deployment", "CronJob", "Job", "ConfigMap"]), st.sampled_from(["/mutate", "/validate"]))
def test_any_object_at_all(obj: Any, kind: str, endpoint: str) -> None:
    body = review(None, kind=kind)
    body["request"]["object"] = obj
    _assert_valid_answer(body, obj, CLIENT.post(endpoint, json=body))


@FUZZ
@given(st.dictionaries(st.sampled_from(["uid", "kind", "operation", "object", "namespace", "subResource", "resource"]), json_values))
def test_mangled_request_stanzas_get_a_review_or_a_400(request: dict[str, Any]) -> None:
    body = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}
    response = CLIENT.post("/mutate", json=body)
    if isinstance(request.get("uid"), str) and request["uid"]:
        _assert_valid_answer(body, request.get("object"), response)
    else:
        assert response.status_code == 400 and "request.uid" in response.json()["error"]


def test_huge_lists_and_deep_nesting() -> None:
    obj = _deployment()
    obj["spec"]["template"]["spec"]["containers"] = [{"name": f"c{i}", "image": "x"} for i in range(5000)]
    body = review(obj)
    answer = CLIENT.post("/mutate", json=body)
    _assert_valid_answer(body, obj, answer)
    assert "at most 512" in answer.json()["response"]["warnings"][0]
    deep: Any = "leaf"
    for _ in range(100_000):
        deep = [deep]
    nested = '{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": ' + "[" * 50_000 + "]" * 50_000 + "}"
    response = CLIENT.post("/mutate", content=nested)
    assert response.status_code in (400, 413) and "error" in response.json()
    deep_yaml = "a: " + "[" * 20_000 + "]" * 20_000
    response = CLIENT.post("/infer/from-yaml", content=deep_yaml)
    assert response.status_code == 400 and "YAML" in response.json()["error"]


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_json_constants_are_refused(constant: str) -> None:
    body = json.dumps(review(_deployment())).replace('"replicas": 2', f'"replicas": {constant}')
    response = CLIENT.post("/mutate", content=body)
    assert response.status_code == 400 and f"{constant} is not a JSON value" in response.json()["error"]
    predict = '{"workload_kind": "Pod", "containers": [{"name": "c"}], "extended_resources": {"x/y": %s}}' % constant
    assert CLIENT.post("/predict", content=predict).status_code == 400


@FUZZ
@given(st.text(max_size=400))
def test_any_text_to_the_yaml_endpoints(text: str) -> None:
    for endpoint in ("/infer/from-yaml", "/predict/from-yaml"):
        response = CLIENT.post(endpoint, content=text.encode("utf-8", "surrogatepass"))
        assert response.status_code in (200, 400, 422), (endpoint, response.text)
        assert isinstance(response.json(), dict)


@FUZZ
@given(st.sampled_from(PATHS), json_values)
def test_manifests_with_anything_anywhere(path: tuple[Any, ...], value: Any) -> None:
    obj = _deployment()
    _put(obj, path, value)
    try:
        text = yaml.safe_dump(obj, allow_unicode=True)
    except yaml.YAMLError:
        return  # not expressible as YAML: nothing a client could send
    response = CLIENT.post("/predict/from-yaml", content=text.encode("utf-8", "surrogatepass"))
    assert response.status_code in (200, 400, 422), response.text
    if response.status_code == 200:
        assert len(response.json()["predictions"]) == 1


@FUZZ
@given(json_values)
def test_any_json_to_predict(body: Any) -> None:
    response = CLIENT.post("/predict", content=json.dumps(body))
    assert response.status_code in (200, 422), response.text


schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_openapi_contract(case: schemathesis.Case) -> None:
    response = case.call()
    assert response.status_code < 500, response.text
    # JSON Schema cannot say "valid YAML": any string fits the YAML endpoints' schema, and
    # refusing the ones that are not YAML (400, saying where) is the documented contract.
    excluded = [schemathesis.checks.positive_data_acceptance] if case.path.endswith("/from-yaml") else []
    if response.status_code == 413:
        # A body over the size limit is refused unread, with the documented 413, whatever it holds
        # (negative data grown past the limit, such as a containers list far over maxItems).
        excluded.append(schemathesis.checks.negative_data_rejection)
    case.validate_response(response, excluded_checks=excluded)


@pytest.mark.parametrize("oddity", ["huge-number", "lone-surrogate", "utf-16"])
def test_json_the_fast_parser_refuses_is_still_read(oddity: str) -> None:
    """Valid JSON that msgspec will not read goes through the standard library's parser."""
    body = json.dumps(review(_deployment()))
    if oddity == "huge-number":
        body = body.replace('"name": "web"', '"name": "web", "generation": 1e400', 1)
    if oddity == "lone-surrogate":
        body = body.replace('"name": "web"', '"name": "web", "x-note": "\\ud800"', 1)
    raw = body.encode("utf-16") if oddity == "utf-16" else body.encode()
    with pytest.raises(msgspec.DecodeError):
        msgspec.json.decode(raw)
    response = CLIENT.post("/mutate", content=raw)
    assert response.status_code == 200 and response.json()["response"]["allowed"] is True
    assert "patch" in response.json()["response"]
