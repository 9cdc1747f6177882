"""Every kustomization in deploy/, rendered by the real kustomize, passes the real apiserver's checks.

Each rendered object is created with ``dryRun=All`` and ``fieldValidation=Strict``: the
apiserver decodes, defaults, validates and admits it exactly as ``kubectl apply`` would, and
refuses unknown fields (a mistyped key would otherwise be dropped in silence), but stores
nothing. Namespaces are created for real first, since a dry run of a namespaced object
needs its namespace to exist.

Overlays and other kustomizations (deploy/overlays/*, deploy/trainer) are found at
collection time, so new ones are covered without touching this file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.controlplane import BinariesMissing, ControlPlane
from tests.e2e.kube_rest import KubeRest, ServedResource, served_resources
from tests.e2e.kustomize import build, kustomization_dirs, kustomization_file, locate_kustomize
from tests.e2e.webhook_fixtures import create_namespace, eventually
from tests.e2e.workloads import WORKLOADS, workload
from trainer.collect import collect_requests
from trainer.kube import COLLECTED_KINDS, WorkloadReader
from webhook.admission.inventory import InventoryWatcher, WorkloadInventory

pytestmark = pytest.mark.e2e

DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy"
SKIP_VARIABLE = "ENERGETISCOPE_SKIP_E2E"
# API groups that only exist once a third party's CRDs are installed, and why that is fine.
CRD_GROUPS = {
    "cert-manager.io": "needs cert-manager's CRDs, which the test control plane does not install; "
                       "cert-manager validates its own objects in a cluster",
    "monitoring.coreos.com": "needs the Prometheus Operator's CRDs, which the test control plane does not install",
}


@dataclass(frozen=True)
class Rendered:
    """One object of one kustomization's output."""

    directory: Path
    obj: dict[str, Any]

    @property
    def namespace(self) -> str | None:
        return self.obj.get("metadata", {}).get("namespace")

    @property
    def group(self) -> str:
        api_version = str(self.obj["apiVersion"])
        return api_version.split("/")[0] if "/" in api_version else ""


def _render_all() -> tuple[list[Rendered], str | None]:
    """Every rendered object of every kustomization, or why there are none."""
    try:
        kustomize = locate_kustomize()
    except BinariesMissing as error:
        return [], str(error)
    rendered: list[Rendered] = []
    for directory in kustomization_dirs(DEPLOY_DIR):
        rendered += [Rendered(directory, obj) for obj in build(kustomize, directory)]
    return rendered, None


RENDERED, RENDER_PROBLEM = _render_all()


def _id(item: Rendered) -> str:
    return f"{item.directory.relative_to(DEPLOY_DIR)}:{item.obj['kind']}/{item.obj['metadata']['name']}"


def _require_rendered() -> None:
    if RENDER_PROBLEM is None:
        return
    if os.environ.get(SKIP_VARIABLE) == "1":
        pytest.skip(f"{SKIP_VARIABLE}=1 and {RENDER_PROBLEM}")
    pytest.fail(f"{RENDER_PROBLEM} (or set {SKIP_VARIABLE}=1 to skip the end-to-end tests)", pytrace=False)


@pytest.fixture(scope="module")
def served(kube_rest: KubeRest) -> dict[tuple[str, str], ServedResource]:
    return served_resources(kube_rest)


@pytest.fixture(scope="module")
def deploy_namespaces(kube_rest: KubeRest) -> set[str]:
    """deploy/'s Namespace objects, created for real (once, however many kustomizations define them)."""
    _require_rendered()
    created: dict[str, dict[str, Any]] = {}
    for item in RENDERED:
        if item.obj["kind"] == "Namespace" and item.obj["metadata"]["name"] not in created:
            reply = kube_rest.create("/api/v1/namespaces", item.obj)
            assert reply.ok or reply.status == 409, f"{_id(item)}: HTTP {reply.status}: {reply.message}"
            created[item.obj["metadata"]["name"]] = item.obj
    return set(created)


def test_deploy_has_the_base_and_every_rendering_is_non_empty() -> None:
    _require_rendered()
    directories = {item.directory for item in RENDERED}
    assert DEPLOY_DIR / "base" in directories
    assert directories == set(kustomization_dirs(DEPLOY_DIR)), "a kustomization rendered nothing"


@pytest.mark.parametrize("directory", kustomization_dirs(DEPLOY_DIR), ids=lambda d: str(d.relative_to(DEPLOY_DIR)))
def test_every_yaml_file_is_used_by_its_kustomization(directory: Path) -> None:
    # A manifest left out of `resources` is never applied, and nothing else would notice.
    kustomization_path = kustomization_file(directory)
    assert kustomization_path is not None
    kustomization = yaml.safe_load(kustomization_path.read_text())
    used = set(kustomization.get("resources") or []) | set(kustomization.get("components") or [])
    used |= {patch["path"] for patch in kustomization.get("patches") or [] if "path" in patch}
    used |= set(kustomization.get("patchesStrategicMerge") or [])
    files = {path.name for path in directory.iterdir()
             if path.suffix in (".yaml", ".yml") and path != kustomization_path}
    assert files - used == set(), f"{directory.relative_to(DEPLOY_DIR)}: files no kustomization entry names"


@pytest.mark.parametrize("item", RENDERED or [None], ids=lambda item: _id(item) if item else "nothing-rendered")
def test_rendered_object_passes_a_server_side_dry_run(
    item: Rendered | None, kube_rest: KubeRest, served: dict[tuple[str, str], ServedResource],
    deploy_namespaces: set[str],
) -> None:
    _require_rendered()
    assert item is not None
    kind, name = item.obj["kind"], item.obj["metadata"]["name"]
    resource = served.get((item.obj["apiVersion"], kind))
    if resource is None:
        reason = CRD_GROUPS.get(item.group)
        if reason is None:
            pytest.fail(f"{item.obj['apiVersion']} {kind} is not served by kube-apiserver and is not a known CRD group")
        pytest.skip(f"{item.obj['apiVersion']} {kind}: {reason}")
    if kind == "Namespace":
        assert name in deploy_namespaces  # created for real by the fixture
        return
    if resource.namespaced:
        assert item.namespace is not None, f"{kind}/{name} has no namespace after kustomize"
        assert item.namespace in deploy_namespaces, f"namespace {item.namespace} is not defined in deploy/"
    else:
        assert item.namespace is None, f"cluster-scoped {kind}/{name} was given namespace {item.namespace}"

    reply = kube_rest.request("POST", resource.collection(item.namespace), item.obj,
                              {"dryRun": "All", "fieldValidation": "Strict"})
    assert reply.status == 201, f"{_id(item)}: HTTP {reply.status}: {reply.message or reply.body}"
    assert reply.warnings == [], f"{_id(item)}: the apiserver warned"
    # The server's answer is the object it would store: the same identity, nothing lost.
    assert (reply.body["kind"], reply.body["metadata"]["name"]) == (kind, name)
    assert reply.body["metadata"].get("namespace") == item.namespace
    assert kube_rest.get(f"{resource.collection(item.namespace)}/{name}").status == 404, "dry run stored it"


# -- the RBAC in deploy/ lets each component do what its code does --------------------------

RBAC_KINDS = ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")
# Applied under other names, so the dry runs above still find deploy/'s own names free.
RBAC_SUFFIX = "-e2e-rbac"


def _service_account_user(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


def _rbac_objects(directory: Path) -> list[dict[str, Any]]:
    """The roles and bindings ``directory`` renders, renamed; subjects are kept as they are."""
    renamed = []
    for item in RENDERED:
        if item.directory != directory or item.obj["kind"] not in RBAC_KINDS:
            continue
        obj = {**item.obj, "metadata": {**item.obj["metadata"], "name": item.obj["metadata"]["name"] + RBAC_SUFFIX}}
        if "roleRef" in obj:
            obj["roleRef"] = {**obj["roleRef"], "name": obj["roleRef"]["name"] + RBAC_SUFFIX}
        renamed.append(obj)
    return renamed


@pytest.fixture(scope="module")
def applied_rbac(kube_rest: KubeRest, served: dict[tuple[str, str], ServedResource],
                 deploy_namespaces: set[str]) -> None:
    """deploy/base's and deploy/trainer's roles and bindings, created for real."""
    for directory in (DEPLOY_DIR / "base", DEPLOY_DIR / "trainer"):
        objects = _rbac_objects(directory)
        assert objects, f"{directory.relative_to(DEPLOY_DIR)} renders no RBAC"
        for obj in objects:
            resource = served[(obj["apiVersion"], obj["kind"])]
            reply = kube_rest.create(resource.collection(obj["metadata"].get("namespace")), obj)
            assert reply.ok or reply.status == 409, f"{obj['kind']}/{obj['metadata']['name']}: {reply.message}"


def _annotated_deployment(kube_rest: KubeRest, name: str) -> tuple[str, str]:
    """A namespace holding one Deployment with a pod power annotation; (namespace, name)."""
    namespace = create_namespace(kube_rest, "e2e-rbac")
    manifest = workload("Deployment", name)
    manifest["metadata"]["annotations"] = {"energetiscope.io/pod-power-watts": "1.000"}
    kube_rest.create(WORKLOADS["Deployment"].collection(namespace), manifest).expect_ok()
    return namespace, name


def test_the_webhooks_service_account_can_run_the_inventory_and_write_nothing(
    control_plane: ControlPlane, kube_rest: KubeRest, applied_rbac: None
) -> None:
    # The identity deploy/base's Deployment runs as (a client certificate naming the service
    # account's user: RBAC binds by user name).
    user = _service_account_user("energetiscope", "energetiscope-webhook")
    with control_plane.api_client(user, ("system:serviceaccounts", "system:serviceaccounts:energetiscope")) as client:
        inventory = WorkloadInventory()
        watcher = InventoryWatcher(inventory, client, watch_timeout_seconds=30)
        watcher.start()
        try:
            # Every kind listed...
            eventually(lambda: True if inventory.synced else None, "the inventory listing every kind as the webhook")
            # ...and watched: a workload created after the lists reaches it.
            namespace, name = _annotated_deployment(kube_rest, "counted")
            eventually(lambda: inventory.workload((namespace, "Deployment", name)),
                       "the inventory's watch seeing a new Deployment as the webhook")
        finally:
            watcher.stop()
        denied = KubeRest(client).create(WORKLOADS["Deployment"].collection(namespace), workload("Deployment", "nope"))
        assert denied.status == 403, "the webhook's identity may write workloads"
        assert KubeRest(client).get(f"/api/v1/namespaces/{namespace}/secrets").status == 403


def test_the_trainers_service_account_can_collect_and_watch(
    control_plane: ControlPlane, kube_rest: KubeRest, applied_rbac: None
) -> None:
    namespace, name = _annotated_deployment(kube_rest, "collected")
    user = _service_account_user("energetiscope", "energetiscope-trainer")
    with control_plane.api_client(user, ("system:serviceaccounts", "system:serviceaccounts:energetiscope")) as client:
        # What `train collect --watch 1s` does: list every kind everywhere, then watch.
        report = collect_requests(WorkloadReader(client), watch_seconds=1)
    assert (namespace, "Deployment", name) in {(r.namespace, r.workload_kind, r.workload_name) for r in report.requests}
    assert set(report.objects_per_kind) == set(COLLECTED_KINDS)
