"""The control plane the end-to-end tests stand on behaves like a real cluster's API."""

from __future__ import annotations

import base64
import http.server
import json
import os
import socket
import ssl
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

import kubernetes.client
import kubernetes.config
import pytest
import urllib3
from kubernetes.client.rest import ApiException

from certs.authority import create_ca, issue_certificate, write_pair
from tests.e2e import controlplane
from tests.e2e.controlplane import Binaries, ControllerBinaries, ControlPlane, ControlPlaneError, kubernetes_version
from tests.e2e.webhook_fixtures import eventually

pytestmark = pytest.mark.e2e


@pytest.fixture
def namespace(kube_api: kubernetes.client.ApiClient) -> Iterator[str]:
    """A fresh namespace (deleting it only marks it Terminating: no controller runs)."""
    name = f"e2e-{uuid.uuid4().hex[:10]}"
    core = kubernetes.client.CoreV1Api(kube_api)
    core.create_namespace(kubernetes.client.V1Namespace(metadata=kubernetes.client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


def deployment(name: str, image: str = "registry.example/app:1.0") -> kubernetes.client.V1Deployment:
    labels = {"app": name}
    return kubernetes.client.V1Deployment(
        metadata=kubernetes.client.V1ObjectMeta(name=name, labels=labels),
        spec=kubernetes.client.V1DeploymentSpec(
            replicas=2,
            selector=kubernetes.client.V1LabelSelector(match_labels=labels),
            template=kubernetes.client.V1PodTemplateSpec(
                metadata=kubernetes.client.V1ObjectMeta(labels=labels),
                spec=kubernetes.client.V1PodSpec(
                    containers=[
                        kubernetes.client.V1Container(
                            name="app",
                            image=image,
                            resources=kubernetes.client.V1ResourceRequirements(
                                requests={"cpu": "250m", "memory": "64Mi"}
                            ),
                        )
                    ]
                ),
            ),
        ),
    )


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def port_accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_version_is_the_built_release(kube_api: kubernetes.client.ApiClient) -> None:
    version = kubernetes.client.VersionApi(kube_api).get_code()
    expected = kubernetes_version()
    assert version.git_version == expected
    assert (version.major, version.minor) == ("1", expected.split(".")[1])


def test_namespace_and_deployment_are_stored(kube_api: kubernetes.client.ApiClient, namespace: str) -> None:
    core = kubernetes.client.CoreV1Api(kube_api)
    apps = kubernetes.client.AppsV1Api(kube_api)
    assert core.read_namespace(namespace).status.phase == "Active"

    created = apps.create_namespaced_deployment(namespace, deployment("web"))
    assert created.metadata.uid and created.metadata.resource_version

    stored = apps.read_namespaced_deployment("web", namespace)
    assert stored.metadata.uid == created.metadata.uid
    assert stored.spec.replicas == 2
    container = stored.spec.template.spec.containers[0]
    assert container.image == "registry.example/app:1.0"
    assert container.resources.requests == {"cpu": "250m", "memory": "64Mi"}
    # Defaulting ran on the server: the strategy was not in the request.
    assert stored.spec.strategy.type == "RollingUpdate"
    names = [d.metadata.name for d in apps.list_namespaced_deployment(namespace).items]
    assert names == ["web"]


def test_server_side_dry_run_is_not_persisted(kube_api: kubernetes.client.ApiClient, namespace: str) -> None:
    apps = kubernetes.client.AppsV1Api(kube_api)
    answered = apps.create_namespaced_deployment(namespace, deployment("dry"), dry_run="All")
    # The server ran admission and defaulting and answered with the object...
    assert answered.metadata.name == "dry"
    assert answered.spec.strategy.type == "RollingUpdate"
    # ...but did not store it.
    with pytest.raises(ApiException) as missing:
        apps.read_namespaced_deployment("dry", namespace)
    assert missing.value.status == 404
    assert apps.list_namespaced_deployment(namespace).items == []


def test_rbac_forbids_users_outside_system_masters(
    control_plane: ControlPlane, kube_api: kubernetes.client.ApiClient, namespace: str
) -> None:
    kubernetes.client.CoreV1Api(kube_api).list_namespaced_secret(namespace)  # the admin may

    user, group = "energetiscope-e2e-viewer", "energetiscope-e2e-viewers"
    with control_plane.api_client(user, [group]) as viewer_client:
        viewer = kubernetes.client.CoreV1Api(viewer_client)
        with pytest.raises(ApiException) as forbidden:
            viewer.list_namespaced_secret(namespace)
        assert forbidden.value.status == 403
        assert f'User "{user}" cannot list resource "secrets"' in json.loads(forbidden.value.body)["message"]

        # Binding a Role to the user's group grants exactly that: authorization is RBAC,
        # not a blanket deny.
        rbac = kubernetes.client.RbacAuthorizationV1Api(kube_api)
        rbac.create_namespaced_role(
            namespace,
            kubernetes.client.V1Role(
                metadata=kubernetes.client.V1ObjectMeta(name="read-secrets"),
                rules=[kubernetes.client.V1PolicyRule(api_groups=[""], resources=["secrets"], verbs=["list"])],
            ),
        )
        rbac.create_namespaced_role_binding(
            namespace,
            kubernetes.client.V1RoleBinding(
                metadata=kubernetes.client.V1ObjectMeta(name="viewers-read-secrets"),
                role_ref=kubernetes.client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="read-secrets"),
                subjects=[kubernetes.client.RbacV1Subject(api_group="rbac.authorization.k8s.io", kind="Group", name=group)],
            ),
        )
        # The RBAC authorizer reads roles and bindings from its informers' caches: a new binding
        # takes effect a moment after it is stored (a 403 seen right after it, in one CI run).
        def listed() -> list[object] | None:
            try:
                return list(viewer.list_namespaced_secret(namespace).items)
            except ApiException as refused:
                if refused.status != 403:
                    raise
                return None

        assert eventually(listed, "the Role binding took effect") == []
        with pytest.raises(ApiException) as still_forbidden:
            viewer.list_namespace()
        assert still_forbidden.value.status == 403


def test_service_account_tokens_are_signed_and_verified(
    control_plane: ControlPlane, kube_api: kubernetes.client.ApiClient, namespace: str
) -> None:
    # The TokenRequest API signs with --service-account-signing-key-file; authenticating
    # with the token verifies it against --service-account-key-file.
    core = kubernetes.client.CoreV1Api(kube_api)
    core.create_namespaced_service_account(
        namespace, kubernetes.client.V1ServiceAccount(metadata=kubernetes.client.V1ObjectMeta(name="robot"))
    )
    token = core.create_namespaced_service_account_token(
        "robot", namespace, kubernetes.client.AuthenticationV1TokenRequest(spec=kubernetes.client.V1TokenRequestSpec(audiences=[]))
    ).status.token
    with control_plane.bearer_token_client(token) as robot_client:
        review = kubernetes.client.AuthenticationV1Api(robot_client).create_self_subject_review(
            kubernetes.client.V1SelfSubjectReview()
        )
    assert review.status.user_info.username == f"system:serviceaccount:{namespace}:robot"


class DenyingWebhook(http.server.BaseHTTPRequestHandler):
    """A validating admission webhook that denies every request it is sent."""

    def do_POST(self) -> None:  # noqa: N802 (the http.server naming)
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        answer = {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": {
                "uid": review["request"]["uid"],
                "allowed": False,
                "status": {"code": 403, "message": f"denied by the loopback test webhook: {review['request']['name']}"},
            },
        }
        body = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def denying_webhook_url(tmp_path: Path) -> Iterator[tuple[str, bytes]]:
    """An HTTPS webhook server on loopback: (URL, PEM of the CA that signed its certificate)."""
    ca = create_ca("e2e-test-webhook-ca")
    cert_path, key_path = write_pair(issue_certificate(ca, "webhook", ip_addresses=["127.0.0.1"]), tmp_path, "webhook")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), DenyingWebhook)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/validate", ca.cert_pem
    finally:
        server.shutdown()
        server.server_close()


def test_apiserver_calls_an_admission_webhook_on_loopback(
    kube_api: kubernetes.client.ApiClient, namespace: str, denying_webhook_url: tuple[str, bytes]
) -> None:
    # What the webhook's own end-to-end tests rely on: admission webhooks are enabled and
    # the apiserver reaches a TLS server on 127.0.0.1 given by URL and caBundle.
    url, ca_pem = denying_webhook_url
    admission = kubernetes.client.AdmissionregistrationV1Api(kube_api)
    configuration_name = f"deny-{namespace}"
    admission.create_validating_webhook_configuration(
        kubernetes.client.V1ValidatingWebhookConfiguration(
            metadata=kubernetes.client.V1ObjectMeta(name=configuration_name),
            webhooks=[
                kubernetes.client.V1ValidatingWebhook(
                    name="deny.e2e.energetiscope.dev",
                    client_config=kubernetes.client.AdmissionregistrationV1WebhookClientConfig(
                        url=url, ca_bundle=base64.b64encode(ca_pem).decode()
                    ),
                    rules=[
                        kubernetes.client.V1RuleWithOperations(
                            api_groups=[""], api_versions=["v1"], operations=["CREATE"], resources=["configmaps"]
                        )
                    ],
                    namespace_selector=kubernetes.client.V1LabelSelector(
                        match_labels={"kubernetes.io/metadata.name": namespace}
                    ),
                    failure_policy="Fail",
                    side_effects="None",
                    admission_review_versions=["v1"],
                    timeout_seconds=5,
                )
            ],
        )
    )
    core = kubernetes.client.CoreV1Api(kube_api)
    try:
        # The apiserver picks up new configurations from a watch: allow it a moment.
        deadline = time.monotonic() + 15
        attempt = 0
        while True:
            attempt += 1
            config_map = kubernetes.client.V1ConfigMap(metadata=kubernetes.client.V1ObjectMeta(name=f"probe-{attempt}"))
            try:
                core.create_namespaced_config_map(namespace, config_map)
            except ApiException as denial:
                assert denial.status == 403
                assert f"denied by the loopback test webhook: probe-{attempt}" in json.loads(denial.body)["message"]
                break
            assert time.monotonic() < deadline, "the webhook was never called"
            time.sleep(0.2)
    finally:
        admission.delete_validating_webhook_configuration(configuration_name)


def test_kubeconfig_authenticates_as_admin(control_plane: ControlPlane) -> None:
    with kubernetes.config.new_client_from_config(config_file=str(control_plane.kubeconfig_path)) as client:
        names = {n.metadata.name for n in kubernetes.client.CoreV1Api(client).list_namespace().items}
    assert {"default", "kube-system"} <= names


def test_stop_leaves_no_process_port_or_directory(control_plane_binaries: Binaries) -> None:
    plane = ControlPlane(binaries=control_plane_binaries).start()
    try:
        pids = plane.pids
        port = int(plane.url.rsplit(":", 1)[1])
        directory = plane.directory
        assert set(pids) == {"etcd", "kube-apiserver"}
        assert all(process_exists(pid) for pid in pids.values())
        with plane.api_client() as client:
            assert kubernetes.client.VersionApi(client).get_code().git_version == kubernetes_version()
    finally:
        plane.stop()
    assert [name for name, pid in pids.items() if process_exists(pid)] == []
    assert not port_accepts(port)
    assert not directory.exists()
    assert plane.pids == {}
    plane.stop()  # idempotent


def test_a_plane_with_controllers_runs_them_on_ready_fake_nodes_and_stop_ends_them(
    control_plane_binaries: Binaries, controller_binaries: ControllerBinaries, tmp_path: Path
) -> None:
    plane = ControlPlane(binaries=control_plane_binaries, controllers=controller_binaries, fake_nodes=2,
                         keep_logs_in=tmp_path / "logs").start()
    try:
        pids = plane.pids
        directory = plane.directory
        assert set(pids) == {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"}
        assert all(plane.running(name) for name in pids)
        with plane.api_client() as client:
            core = kubernetes.client.CoreV1Api(client)
            nodes = {node.metadata.name: node for node in core.list_node().items}
            # Only the plane's own Nodes, each kwok's (by annotation), Ready and schedulable.
            assert sorted(nodes) == plane.fake_node_names == ["kwok-node-0", "kwok-node-1"]
            for node in nodes.values():
                assert node.metadata.annotations[controlplane.KWOK_NODE_ANNOTATION] == "fake"
                assert {c.type: c.status for c in node.status.conditions}["Ready"] == "True"
                assert not node.spec.taints
    finally:
        plane.stop()
    assert [name for name, pid in pids.items() if process_exists(pid)] == []
    assert not directory.exists()
    assert sorted(log.name.removeprefix(f"{directory.name}-") for log in (tmp_path / "logs").iterdir()) == [
        "etcd.log", "kube-apiserver.log", "kube-controller-manager.log", "kube-scheduler.log", "kwok.log"]


def test_start_retries_when_a_chosen_port_was_taken(
    control_plane_binaries: Binaries, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        real_free_ports = controlplane.free_loopback_ports
        picks: list[list[int]] = []

        def first_pick_is_taken(count: int) -> list[int]:
            ports = real_free_ports(count)
            if not picks:
                ports[0] = taken  # etcd's client port, as if another process won the race
            picks.append(ports)
            return ports

        monkeypatch.setattr(controlplane, "free_loopback_ports", first_pick_is_taken)
        with ControlPlane(binaries=control_plane_binaries) as plane:
            assert plane.etcd_url != f"http://127.0.0.1:{taken}"
            with plane.api_client() as client:
                kubernetes.client.CoreV1Api(client).list_namespace()
    assert picks[0][0] == taken and len(picks) >= 3  # etcd twice, then the apiserver


def test_failed_start_tears_down_what_it_started(control_plane_binaries: Binaries) -> None:
    plane = ControlPlane(binaries=control_plane_binaries, extra_apiserver_args=["--no-such-flag=1"])
    started: dict[str, int] = {}
    directories: list[Path] = []
    original_start_apiserver = plane._start_apiserver

    def remember_etcd_then_start_apiserver(port: int) -> None:
        started.update(plane.pids)
        directories.append(plane.directory)
        original_start_apiserver(port)

    plane._start_apiserver = remember_etcd_then_start_apiserver  # type: ignore[method-assign]
    with pytest.raises(ControlPlaneError) as failure:
        plane.start()
    message = str(failure.value)
    assert "kube-apiserver exited" in message
    assert "no-such-flag" in message  # the log's tail says why
    assert "etcd" in started and not process_exists(started["etcd"])
    assert plane.pids == {}
    assert directories and not directories[0].exists()


def test_apiserver_and_etcd_restart_on_their_ports_with_their_data(control_plane_binaries: Binaries) -> None:
    with ControlPlane(binaries=control_plane_binaries) as plane, plane.api_client() as client:
        core = kubernetes.client.CoreV1Api(client)
        core.create_namespace({"metadata": {"name": "kept-across-restarts"}})
        url, etcd_url = plane.url, plane.etcd_url
        plane.stop_apiserver()
        assert not plane.running("kube-apiserver") and plane.running("etcd")
        plane.stop_etcd()
        assert not plane.running("etcd")
        plane.start_etcd()
        plane.start_apiserver()
        assert (plane.url, plane.etcd_url) == (url, etcd_url)
        assert plane.running("kube-apiserver") and plane.running("etcd")
        # The client's pooled connection went with the old process: the first call may fail.
        for attempt in range(3):
            try:
                assert core.read_namespace("kept-across-restarts").metadata.name == "kept-across-restarts"
                break
            except urllib3.exceptions.HTTPError:
                if attempt == 2:
                    raise
        with pytest.raises(ControlPlaneError, match="is running"):
            plane.start_apiserver()
