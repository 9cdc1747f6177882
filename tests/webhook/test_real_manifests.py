"""What real manifests hold that a hand-written one rarely does, read as Kubernetes reads it.

Each case comes from a public project's manifests (named beside it) that `predict` or the webhook
refused, crashed on or read wrongly; each is valid to the Kubernetes API.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from webhook.cli import main
from webhook.model import manifests
from webhook.model.extract import ExtractionError, to_inference_request
from webhook.model.gpus import gpu_fraction
from webhook.model.manifests import load_documents, read_manifests
from webhook.model.prior import PriorPredictor


def _deployment(name: str = "web", resources: dict[str, Any] | None = None,
                resources_at_pod: dict[str, Any] | None = None, **pod_spec: Any) -> dict[str, Any]:
    container = {"name": "c", "image": "nginx", "resources": resources or {"requests": {"cpu": "250m"}}}
    if resources_at_pod is not None:
        pod_spec["resources"] = resources_at_pod
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "shop"},
            "spec": {"template": {"spec": {"containers": [container], **pod_spec}}}}


def _predict(text: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["predict", "-", "-o", "json"], input=text)
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.output


# ---- YAML as Kubernetes reads it --------------------------------------------------------------------

KUBERNETES_SCALARS = """\
date: 2024-01-15
tagged_date: !!timestamp 2024-01-01
time: 12:30
negative_time: -12:30
equals: =
operators: ['!=', =, =~]
replicas: 3
ratio: 1.5
hex: 0x1F
upper_hex: 0X10
octal: 0755
go_octal: 0o17
not_octal: 08
binary: 0b101
enabled: true
short_yes: y
short_no: N
thousand: 1_000
exponent: 1e3
whole_float: 2.0
leading_dot: .5e1
infinite: -.inf
unknown_tag: !custom x
ci_reference: !reference [.setup, script]
words: [., 1.2.3, 1e, _1, '-']
empty: ~
"""


@pytest.mark.parametrize("loader", ["libyaml", "pure-python"])
def test_scalars_are_read_as_kubernetes_reads_them(loader: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # go-yaml v2 into interface{}, then JSON (sigs.k8s.io/yaml): dates and base-60 numbers are
    # strings, numbers are what Go's strconv reads (a whole float is an integer in JSON), y and N
    # are booleans, an unknown tag is ignored.
    if loader == "pure-python":
        monkeypatch.setattr(manifests, "_FastLoader", manifests._SafeLoader)
    [document] = load_documents(KUBERNETES_SCALARS)
    assert document == {
        "date": "2024-01-15", "tagged_date": "2024-01-01", "time": "12:30", "negative_time": "-12:30",
        "equals": "=", "operators": ["!=", "=", "=~"], "replicas": 3, "ratio": 1.5, "hex": 31, "upper_hex": 16,
        "octal": 493, "go_octal": 15, "not_octal": 8, "binary": 5, "enabled": True, "short_yes": True,
        "short_no": False, "thousand": 1000, "exponent": 1000, "whole_float": 2, "leading_dot": 5,
        "infinite": float("-inf"), "unknown_tag": "x", "ci_reference": [".setup", "script"],
        "words": [".", "1.2.3", "1e", "_1", "-"], "empty": None}
    assert type(document["exponent"]) is int and type(document["whole_float"]) is int


def test_counts_written_as_go_yaml_numbers_are_read() -> None:
    text = yaml.safe_dump(_deployment()).replace("spec:\n", "spec:\n  replicas: 1e1\n", 1)
    [(_, request)] = read_manifests(text).requests
    assert request.replicas == 10


def test_what_the_api_server_refuses_is_refused() -> None:
    # A label value that YAML reads as a boolean or a number is not a string to the API server.
    for value in ("y", "1e3", "09"):
        text = yaml.safe_dump(_deployment()).replace("name: web\n", f"name: web\n  labels: {{v: {value}}}\n", 1)
        [error] = read_manifests(text).errors
        assert error["field"] == "metadata.labels['v']" and error["problem"].startswith("expected a string")


def test_null_args_and_non_string_keys_read_as_json_has_them() -> None:
    deployment = _deployment()
    deployment["spec"]["template"]["spec"]["containers"][0]["args"] = ["--port", None]
    deployment["metadata"]["labels"] = {True: "x", 7: "y"}
    request = to_inference_request(deployment)
    assert request.containers[0].args == ["--port", ""] and request.labels == {"true": "x", "7": "y"}


def test_a_crd_with_an_unquoted_equals_sign_does_not_stop_the_workloads_beside_it() -> None:
    # kube-prometheus manifests/setup/0alertmanagerConfigCustomResourceDefinition.yaml
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "x"}}
    text = yaml.safe_dump(crd) + "spec:\n  enum: ['!=', =, =~]\n---\n" + yaml.safe_dump(_deployment())
    code, output = _predict(text)
    assert code == 0 and json.loads(output)["predictions"][0]["workload_name"] == "web"


def test_date_like_names_labels_and_times_are_strings() -> None:
    text = """\
apiVersion: batch/v1
kind: Job
metadata:
  name: 2024-01-15
  labels: {release: 2024-01-15}
  annotations: {window: 12:30}
spec:
  template:
    spec:
      restartPolicy: Never
      containers: [{name: c, image: busybox}]
"""
    code, output = _predict(text)
    answer = json.loads(output)["predictions"][0]
    assert code == 0 and answer["workload_name"] == "2024-01-15"
    request = read_manifests(text).requests[0][1]
    assert request.labels == {"release": "2024-01-15"} and request.annotations == {"window": "12:30"}


def test_null_label_annotation_and_node_selector_values_are_empty_strings() -> None:
    request = to_inference_request({**_deployment(nodeSelector={"dedicated": None}),
                                    "metadata": {"name": "web", "labels": {"tier": None},
                                                 "annotations": {"description": None}}})
    assert request.labels == {"tier": ""} and request.annotations == {"description": ""}


# ---- quantities and extended resources ---------------------------------------------------------------

def test_a_cpu_quantity_past_a_float_is_an_error_naming_the_field() -> None:
    with pytest.raises(ExtractionError) as raised:
        to_inference_request(_deployment(resources={"limits": {"cpu": "1e400"}}))
    assert raised.value.field == "spec.template.spec.containers[0].resources.limits.cpu"
    assert "above the limit" in raised.value.problem


@pytest.mark.parametrize("name, amount, units", [
    ("sgx.intel.com/epc", "512Ki", 524_288),  # Intel SGX device plugin's job example
    ("nvidia.com/gpumem", 3000, 3000),  # HAMi's GPU memory in MiB
    ("kubernetes.io/batch-memory", "64Mi", 64 * 2**20),  # Koordinator's batch resources
])
def test_extended_resources_that_are_not_gpus_may_count_past_1024(name: str, amount: Any, units: int) -> None:
    request = to_inference_request(_deployment(resources={"limits": {name: amount}}))
    assert request.extended_resources == {name: units} and request.gpu_count == 0


def test_more_than_1024_gpus_in_one_pod_is_still_refused() -> None:
    with pytest.raises(ExtractionError, match="above the limit of 1024 devices"):
        to_inference_request(_deployment(resources={"limits": {"nvidia.com/gpu": 2000}}))


@pytest.mark.parametrize("resource, fraction", [
    ("nvidia.com/gpu.shared", 1.0),  # the device plugin's time-slicing with renameByDefault
    ("nvidia.com/mig-1g.5gb.shared", 1 / 7),
    ("gpu.intel.com/i915", 1.0),
    ("gpu.intel.com/xe", 1.0),
    ("gpu.intel.com/millicores", None),  # a share of an i915, asked beside it
    ("gpu.intel.com/memory.max", None),
    ("gpu.intel.com/tiles", None),
    ("gpu.intel.com/i915_monitoring", None),  # Intel XPU Manager's DaemonSet
    ("gpu.intel.com/monitoring", None),
])
def test_which_extended_resources_are_gpus(resource: str, fraction: float | None) -> None:
    assert gpu_fraction(resource) == (pytest.approx(fraction) if fraction is not None else None)


def test_a_time_sliced_gpu_is_predicted_as_a_gpu_pod() -> None:
    selector = {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    shared = to_inference_request(_deployment(resources={"limits": {"nvidia.com/gpu.shared": 1}}, nodeSelector=selector))
    whole = to_inference_request(_deployment(resources={"limits": {"nvidia.com/gpu": 1}}, nodeSelector=selector))
    prior = PriorPredictor()
    assert shared.gpu_count == 1.0
    assert prior.predict_one(shared).power_watts == pytest.approx(prior.predict_one(whole).power_watts)


def test_intel_gpu_shares_beside_a_device_count_one_gpu() -> None:
    request = to_inference_request(_deployment(resources={"limits": {
        "gpu.intel.com/i915": 1, "gpu.intel.com/millicores": 500, "gpu.intel.com/memory.max": "4Gi"}}))
    assert request.gpu_count == 1.0


def test_zero_requests_read_as_none_so_a_node_agent_is_not_predicted_at_0_w() -> None:
    # Koordinator's koordlet DaemonSet: requests of "0", limits of 500m and 256Mi.
    zero = to_inference_request(_deployment(resources={"requests": {"cpu": "0", "memory": "0"},
                                                       "limits": {"cpu": "500m", "memory": "256Mi"}}))
    limits_only = to_inference_request(_deployment(resources={"limits": {"cpu": "500m", "memory": "256Mi"}}))
    prior = PriorPredictor()
    assert prior.predict_one(zero).power_watts > 0
    assert prior.predict_one(zero).power_watts == prior.predict_one(limits_only).power_watts


# ---- what a file holds ----------------------------------------------------------------------------

def test_predict_reads_a_file_of_more_than_1000_documents() -> None:
    # A rendered platform bundle: the webhook's per-request cap is not the CLI's.
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}}
    text = "---\n".join([yaml.safe_dump(service)] * 1200 + [yaml.safe_dump(_deployment())])
    code, output = _predict(text)
    assert code == 0 and [answer["workload_name"] for answer in json.loads(output)["predictions"]] == ["web"]


def test_a_typed_list_from_the_api_gives_its_items_their_kind() -> None:
    # `kubectl get --raw /apis/apps/v1/namespaces/shop/deployments`: items without kind or apiVersion.
    item = _deployment()
    del item["kind"], item["apiVersion"]
    listing = {"apiVersion": "apps/v1", "kind": "DeploymentList", "items": [item]}
    report = read_manifests(json.dumps(listing))
    assert [(r.workload_kind, r.workload_name) for _, r in report.requests] == [("Deployment", "web")]
    # A `kind: List` says nothing of its items: one without a kind is skipped, as before.
    report = read_manifests(json.dumps({"apiVersion": "v1", "kind": "List", "items": [item]}))
    assert not report.requests and report.skipped[0]["reason"] == "no kind: not a Kubernetes object"


def test_a_file_that_is_not_yaml_or_not_utf8_in_a_directory_is_an_error_and_the_others_are_predicted(tmp_path: Path) -> None:
    # A CI file beside the manifests (GitLab's `!reference` tag), a Helm template's braces.
    (tmp_path / "web.yaml").write_text(yaml.safe_dump(_deployment()), encoding="utf-8")
    (tmp_path / ".ci.yml").write_text("build:\n  script: !reference [.setup, script]\n", encoding="utf-8")
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "job.yaml").write_text("kind: Job\nmetadata: {name: {{ .Release.Name }}}\n", encoding="utf-8")
    (tmp_path / "latin.yaml").write_bytes("kind: ConfigMap\ndata: {a: café}\n".encode("latin-1"))
    result = CliRunner().invoke(main, ["predict", str(tmp_path), "-o", "json"])
    answer = json.loads(result.output)
    assert result.exit_code == 1 and [row["workload_name"] for row in answer["predictions"]] == ["web"]
    failed = {Path(error["file"]).name: error["problem"] for error in answer["errors"]}
    assert set(failed) == {"job.yaml", "latin.yaml"}
    assert failed["job.yaml"].startswith("invalid YAML at line")
    assert failed["latin.yaml"].startswith("not UTF-8 text (byte 0xe9 on line 2)")  # the file is named once
    # The CI file is YAML to Kubernetes (an unknown tag is ignored) and no object: skipped.
    assert [Path(s["file"]).name for s in answer["skipped"]] == [".ci.yml"]
    result = CliRunner().invoke(main, ["predict", str(tmp_path)])
    assert result.exit_code == 1 and "shop/web" in result.output
    assert f"error in {tmp_path / 'templates' / 'job.yaml'}: invalid YAML at line" in result.output


def test_a_zero_pod_level_limit_counts_as_none_too() -> None:
    pod_level = _deployment(resources={"requests": {"cpu": "500m", "memory": "256Mi"}},
                            resources_at_pod={"limits": {"cpu": "0", "memory": "0"}})
    zero = to_inference_request(pod_level)
    without = to_inference_request(_deployment(resources={"requests": {"cpu": "500m", "memory": "256Mi"}}))
    prior = PriorPredictor()
    assert zero.pod_resources is not None and prior.predict_one(zero).power_watts == prior.predict_one(without).power_watts


@pytest.mark.parametrize("text", ["v: !!bool yEs", "v: !!bool 1", "v: !!float abc"])
def test_a_tagged_value_its_tag_cannot_read_is_a_yaml_error_not_a_crash(text: str) -> None:
    with pytest.raises(manifests.ManifestError, match="invalid YAML at line 1"):
        load_documents(text)
