"""Workload objects -> InferenceRequests, on the real manifests in ../shared and on edge cases."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from webhook.model.extract import ExtractionError, to_inference_request
from webhook.model.manifests import ManifestError, read_manifests
from webhook.model.schema import InferenceRequest, spec_hash, workload_pods


def _one(shared_dir: Path, name: str, kind: str | None = None) -> InferenceRequest:
    report = read_manifests((shared_dir / "fixtures" / "manifests" / name).read_text())
    assert not report.errors
    matches = [r for _, r in report.requests if kind is None or r.workload_kind == kind]
    assert len(matches) == 1
    return matches[0]


def test_every_manifest_is_read_or_skipped_with_a_reason(shared_dir: Path) -> None:
    workloads = 0
    for path in sorted((shared_dir / "fixtures" / "manifests").iterdir()):
        report = read_manifests(path.read_text())
        assert not report.errors, (path.name, report.errors)
        assert all(s["reason"] for s in report.skipped)
        workloads += len(report.requests)
    assert workloads >= 25


def test_quantity_forms_from_real_manifests(shared_dir: Path) -> None:
    newrelic = _one(shared_dir, "k8s-examples__newrelic-daemonset_cpu0.15.yaml")
    assert newrelic.containers[0].req_cpu_mcpu == 150  # cpu: 0.15
    exclusive = _one(shared_dir, "k8s-examples__cpu-manager-exclusive-1_pod_256M.yaml")
    assert exclusive.containers[0].req_mem_mib == pytest.approx(256e6 / 2**20)  # 256M is decimal
    selenium = _one(shared_dir, "k8s-examples__selenium-node-chrome-deployment_1000Mi.yaml")
    assert selenium.containers[0].lim_mem_mib == 1000.0
    mysql = _one(shared_dir, "k8s-examples__mysql-cinder-pd_pod_cpu0.5.yaml")
    assert mysql.containers[0].lim_cpu_mcpu == 500


def test_native_sidecar_counts_as_running_container(shared_dir: Path) -> None:
    request = _one(shared_dir, "k8s-website__deployment-sidecar_native-sidecar.yaml")
    assert request.sidecar_count == 1
    assert request.init_container_count == 0
    assert [(c.name, c.native_sidecar) for c in request.containers] == [("logshipper", True), ("myapp", False)]


def test_plain_init_containers_are_counted_not_run(shared_dir: Path) -> None:
    request = _one(shared_dir, "k8s-website__mysql-statefulset_2init_sidecar.yaml")
    assert request.init_container_count == 2
    assert [c.name for c in request.containers] == ["mysql", "xtrabackup"]
    assert request.replicas == 3
    assert workload_pods(request) == 3


def test_gpu_and_other_extended_resources(shared_dir: Path) -> None:
    job = _one(shared_dir, "nvidia-device-plugin__job-1_gpu.yaml")
    assert job.gpu_count == 1 and job.extended_resources == {"nvidia.com/gpu": 1.0}
    dongle = _one(shared_dir, "k8s-website__extended-resource-pod_flowstyle.yaml")
    assert dongle.gpu_count == 0 and dongle.extended_resources == {"example.com/dongle": 3.0}


def test_cronjob_reads_the_job_template(shared_dir: Path) -> None:
    cronjob = _one(shared_dir, "k8tz__simple-cronjob.yaml")
    assert cronjob.workload_kind == "CronJob"
    assert cronjob.containers[0].name == "hello"


def _deployment(**container: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "api", "namespace": "shop"},
        "spec": {
            "replicas": 4,
            "template": {"spec": {"containers": [{"name": "api", "image": "example/api:1", **container}]}},
        },
    }


def test_pod_level_resources_and_node_selector() -> None:
    obj = _deployment(resources={"requests": {"cpu": "250m"}})
    pod_spec = obj["spec"]["template"]["spec"]
    pod_spec["resources"] = {"requests": {"cpu": "2", "memory": "1Gi"}, "limits": {"cpu": "4"}}
    pod_spec["nodeSelector"] = {"node.kubernetes.io/instance-type": "m5.large"}
    pod_spec["priorityClassName"] = "high"
    request = to_inference_request(obj)
    assert request.pod_resources is not None
    assert (request.pod_resources.req_cpu_mcpu, request.pod_resources.req_mem_mib, request.pod_resources.lim_cpu_mcpu) == (
        2000, 1024.0, 4000)
    assert request.instance_type == "m5.large"
    assert request.priority_class == "high"


def test_job_pods_are_parallelism_capped_by_completions() -> None:
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "j"},
        "spec": {"parallelism": 5, "completions": 2, "template": {"spec": {"containers": [{"name": "c"}]}}},
    }
    assert workload_pods(to_inference_request(job)) == 2
    del job["spec"]["completions"]
    assert workload_pods(to_inference_request(job)) == 5


def test_old_batch_v1beta1_cronjob_is_a_workload() -> None:
    cronjob = {
        "apiVersion": "batch/v1beta1",
        "kind": "CronJob",
        "metadata": {"name": "c"},
        "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"parallelism": 3, "template": {"spec": {"containers": [{"name": "c"}]}}}}},
    }
    request = to_inference_request(cronjob)
    assert request.workload_kind == "CronJob" and workload_pods(request) == 3


@pytest.mark.parametrize(
    ("mutate", "field", "problem"),
    [
        (lambda o: o["spec"]["template"]["spec"]["containers"][0].update(resources={"requests": {"cpu": "abc"}}),
         "spec.template.spec.containers[0].resources.requests.cpu", "not a valid quantity"),
        (lambda o: o["spec"]["template"]["spec"]["containers"][0].update(resources={"limits": {"memory": "-1Gi"}}),
         "spec.template.spec.containers[0].resources.limits.memory", "must not be negative"),
        (lambda o: o["spec"]["template"]["spec"]["containers"][0].update(resources={"requests": {"cpu": "1e9"}}),
         "spec.template.spec.containers[0].resources.requests.cpu", "above the"),
        (lambda o: o["spec"]["template"]["spec"].update(containers="nginx"),
         "spec.template.spec.containers", "expected a list"),
        (lambda o: o["spec"]["template"]["spec"].update(containers=[]),
         "spec.template.spec.containers", "at least one container"),
        (lambda o: o["spec"]["template"]["spec"]["containers"][0].update(args=["a", 3]),
         "spec.template.spec.containers[0].args[1]", "expected a string"),
        (lambda o: o["spec"].update(replicas="three"), "spec.replicas", "expected an integer"),
        (lambda o: o["spec"].pop("template"), "spec.template", "is required"),
        (lambda o: o["spec"]["template"]["spec"]["containers"][0].pop("name"),
         "spec.template.spec.containers[0].name", "is required"),
        (lambda o: o["spec"]["template"]["spec"].update(hostNetwork="yes"),
         "spec.template.spec.hostNetwork", "expected true or false"),
        (lambda o: o["spec"]["template"]["spec"]["containers"][0].update(securityContext={"privileged": "true"}),
         "spec.template.spec.containers[0].securityContext.privileged", "expected true or false"),
        (lambda o: o["spec"]["template"]["spec"]["containers"][0].update(
            securityContext={"capabilities": {"add": "NET_ADMIN"}}),
         "spec.template.spec.containers[0].securityContext.capabilities.add", "expected a list"),
        (lambda o: o["spec"]["template"]["spec"]["containers"][0].update(
            securityContext={"capabilities": {"add": ["NET_ADMIN", "X" * 65]}}),
         "spec.template.spec.containers[0].securityContext.capabilities.add[1]", "above the limit of 64"),
    ],
)
def test_errors_name_the_field(mutate: Any, field: str, problem: str) -> None:
    obj = _deployment()
    mutate(obj)
    with pytest.raises(ExtractionError) as caught:
        to_inference_request(obj)
    assert caught.value.field == field
    assert problem in caught.value.problem


def test_spec_hash_ignores_scale_identity_and_our_annotations() -> None:
    base = to_inference_request(_deployment(resources={"requests": {"cpu": "500m"}}))
    scaled = _deployment(resources={"requests": {"cpu": "500m"}})
    scaled["spec"]["replicas"] = 40
    scaled["metadata"]["name"] = "other"
    scaled["metadata"]["annotations"] = {"energetiscope.io/pod-power-watts": "1.000"}
    assert spec_hash(to_inference_request(scaled)) == spec_hash(base)
    bigger = to_inference_request(_deployment(resources={"requests": {"cpu": "600m"}}))
    assert spec_hash(bigger) != spec_hash(base)


def test_host_access_from_a_real_node_agent_manifest(shared_dir: Path) -> None:
    agent = _one(shared_dir, "k8s-examples__newrelic-daemonset_cpu0.15.yaml")
    assert agent.host_namespaces == ["network", "pid", "ipc"]
    assert [c.privileged for c in agent.containers] == [True]
    plain = _one(shared_dir, "seed__nginx-deploy.yaml")
    assert plain.host_namespaces == [] and not any(c.privileged or c.capabilities_added for c in plain.containers)


def test_host_access_of_containers_and_native_sidecars() -> None:
    obj = _deployment(securityContext={"capabilities": {"add": ["NET_ADMIN", "SYS_ADMIN"], "drop": ["ALL"]}})
    pod_spec = obj["spec"]["template"]["spec"]
    pod_spec.update(hostPID=True, hostNetwork=False)
    pod_spec["initContainers"] = [
        {"name": "agent", "image": "example/agent:1", "restartPolicy": "Always", "securityContext": {"privileged": True}},
        {"name": "setup", "image": "example/setup:1", "securityContext": {"privileged": True}},  # exits: not counted
    ]
    request = to_inference_request(obj)
    assert request.host_namespaces == ["pid"]
    assert [(c.name, c.privileged, c.capabilities_added) for c in request.containers] == [
        ("agent", True, []), ("api", False, ["NET_ADMIN", "SYS_ADMIN"])]


def test_spec_hash_keeps_its_value_where_no_host_access_is_set() -> None:
    # Host access came after the hash was published: settings that grant nothing leave it as it
    # was, so a pod's cached prediction and annotation stay; granting something changes it.
    base = spec_hash(to_inference_request(_deployment()))
    granting_nothing = _deployment(securityContext={"privileged": False, "capabilities": {"add": []}})
    granting_nothing["spec"]["template"]["spec"].update(hostNetwork=False, hostPID=False, hostIPC=False)
    assert spec_hash(to_inference_request(granting_nothing)) == base
    payload = to_inference_request(_deployment()).model_dump(mode="json", exclude={
        "replicas", "parallelism", "completions", "completion_mode", "backoff_limit", "active_deadline_seconds",
        "schedule", "time_zone", "suspend", "annotations", "workload_name", "namespace", "host_namespaces",
        "restart_policy"})
    for container in payload["containers"]:
        del container["privileged"], container["capabilities_added"]
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    assert base == hashlib.sha256(canonical.encode()).hexdigest()[:16]  # the published formula, fields as before
    for granting in ({"securityContext": {"privileged": True}}, {"securityContext": {"capabilities": {"add": ["BPF"]}}}):
        assert spec_hash(to_inference_request(_deployment(**granting))) != base
    host = _deployment()
    host["spec"]["template"]["spec"]["hostNetwork"] = True
    assert spec_hash(to_inference_request(host)) != base


def _bare_pod(**pod_spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "build-1", "namespace": "ci"},
            "spec": {"containers": [{"name": "build", "image": "example/builder:5", "command": ["make", "test"],
                                     "resources": {"requests": {"cpu": "2"}}}], **pod_spec}}


def test_a_bare_pod_that_runs_to_completion_is_marked_as_batch_work() -> None:
    from webhook.model.prior import PHYSICS_COLUMNS, PriorCoefficients, physics_row

    column = PHYSICS_COLUMNS.index("runs_to_completion")

    def batch(request: InferenceRequest) -> float:
        return physics_row(request, PriorCoefficients())[column]

    unset, always, never, on_failure = (to_inference_request(_bare_pod(**policy)) for policy in (
        {}, {"restartPolicy": "Always"}, {"restartPolicy": "Never"}, {"restartPolicy": "OnFailure"}))
    assert [r.restart_policy for r in (unset, always, never, on_failure)] == [None, "Always", "Never", "OnFailure"]
    assert [batch(r) for r in (unset, always, never, on_failure)] == [0.0, 0.0, 1.0, 1.0]
    # Absent is Always: the same hash, the one published before the field; running to completion changes it.
    assert spec_hash(unset) == spec_hash(always) != spec_hash(never) != spec_hash(on_failure)
    # Other kinds: the kind fixes the policy (a Deployment's pods Always, a Job's Never or OnFailure).
    deployment = _deployment()
    deployment["spec"]["template"]["spec"]["restartPolicy"] = "Always"
    assert to_inference_request(deployment).restart_policy is None and batch(to_inference_request(deployment)) == 0.0
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"},
           "spec": {"template": {"spec": {**_bare_pod()["spec"], "restartPolicy": "Never"}}}}
    assert to_inference_request(job).restart_policy is None and batch(to_inference_request(job)) == 1.0
    with pytest.raises(ExtractionError) as caught:
        to_inference_request(_bare_pod(restartPolicy="Sometimes"))
    assert caught.value.field == "spec.restartPolicy" and "expected Always, OnFailure or Never" in caught.value.problem


def test_extraction_does_not_modify_the_object() -> None:
    obj = _deployment(resources={"requests": {"cpu": "500m"}})
    before = copy.deepcopy(obj)
    to_inference_request(obj)
    assert obj == before


def test_list_documents_and_yaml_errors() -> None:
    text = yaml.safe_dump(
        {"apiVersion": "v1", "kind": "List", "items": [_deployment(), {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}]}
    )
    report = read_manifests(text)
    assert [(w.document, w.item) for w, _ in report.requests] == [(1, 0)]
    assert report.skipped == [
        {"document": 1, "item": 1, "apiVersion": "v1", "kind": "ConfigMap", "name": "x", "reason": "v1/ConfigMap is not a workload kind"}
    ]
    with pytest.raises(ManifestError, match=r"line 2, column"):
        read_manifests("kind: Pod\n  bad: [unclosed\n")


def test_typed_lists_as_kubectl_get_writes_them_are_read_item_by_item() -> None:
    text = yaml.safe_dump({"apiVersion": "apps/v1", "kind": "DeploymentList", "metadata": {"resourceVersion": "1"},
                           "items": [_deployment(), _deployment(resources={"requests": {"cpu": "2"}})]})
    report = read_manifests(text)
    assert [(w.document, w.item) for w, _ in report.requests] == [(1, 0), (1, 1)]
    assert [r.containers[0].req_cpu_mcpu for _, r in report.requests] == [None, 2000]
    # A kind that merely ends in "List" is an object like any other, items or not: skipped, once.
    for text in ("apiVersion: v1\nkind: AllowList\nmetadata: {name: x}\n",
                 "apiVersion: example.org/v1\nkind: IPAllowList\nmetadata: {name: x}\nitems: {office: 10.0.0.0/8}\n",
                 "apiVersion: example.org/v1\nkind: PlayList\nmetadata: {name: x}\nitems: [a, b]\n"):
        report = read_manifests(text)
        assert not report.errors and len(report.skipped) == 1 and report.skipped[0]["kind"].endswith("List")


def test_a_quantity_read_before_reads_the_same_and_errors_still_name_their_field() -> None:
    """CPU and memory amounts are remembered by their string: the same string reads the same in
    either unit and in any field, and a value that fails is never remembered."""
    first = to_inference_request(_deployment(resources={"requests": {"cpu": "1", "memory": "1"},
                                                        "limits": {"cpu": "1", "memory": "1"}}))
    again = to_inference_request(_deployment(resources={"requests": {"cpu": "1", "memory": "1"},
                                                        "limits": {"cpu": "1", "memory": "1"}}))
    for request in (first, again):
        container = request.containers[0]
        assert container.req_cpu_mcpu == container.lim_cpu_mcpu == 1000  # one core
        assert container.req_mem_mib == container.lim_mem_mib == 1 / 2**20  # one byte
    too_many_cores = "5000"  # 5,000,000 millicores: above the limit as CPU, a few bytes as memory
    assert to_inference_request(_deployment(resources={"requests": {"memory": too_many_cores}}))
    for _ in range(2):
        with pytest.raises(ExtractionError) as caught:
            to_inference_request(_deployment(resources={"limits": {"cpu": too_many_cores}}))
        assert caught.value.field == "spec.template.spec.containers[0].resources.limits.cpu"
        assert "above the" in caught.value.problem
