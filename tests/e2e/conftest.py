"""Fixtures for end-to-end tests against a real kube-apiserver and etcd on loopback.

``control_plane`` is one ControlPlane for the whole session (starting one takes
seconds); tests share it, so each should work in a namespace of its own.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import kubernetes.client
import pytest

from tests.e2e.controlplane import Binaries, BinariesMissing, ControllerBinaries, ControlPlane
from tests.e2e.kube_rest import KubeRest
from tests.e2e.webhook_fixtures import WiredWebhook, iterate_webhook

SKIP_VARIABLE = "ENERGETISCOPE_SKIP_E2E"
LOG_DIR_VARIABLE = "ENERGETISCOPE_E2E_LOG_DIR"
E2E_DIR = Path(__file__).resolve().parent

_B = TypeVar("_B")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Test modules here declare `pytestmark = pytest.mark.e2e`; this covers one that
    # forgets, so `-m "not e2e"` always leaves out everything that needs the binaries.
    for item in items:
        if E2E_DIR in item.path.resolve().parents:
            item.add_marker(pytest.mark.e2e)


def locate_binaries_or_fail() -> Binaries:
    """kube-apiserver and etcd, built; a missing build fails the test unless skipping was asked for."""
    return locate_or_fail(Binaries.locate)


def locate_or_fail(locate: Callable[[], _B]) -> _B:
    """What ``locate()`` finds built; a missing build fails the test unless skipping was asked for.

    A silent skip would let a machine without the binaries report a green run that
    never touched an apiserver.
    """
    try:
        return locate()
    except BinariesMissing as error:
        problem = str(error)
    # Outside the except block, so the report shows the reason once, not a chain.
    if os.environ.get(SKIP_VARIABLE) == "1":
        pytest.skip(f"{SKIP_VARIABLE}=1 and {problem}")
    pytest.fail(f"{problem} (or set {SKIP_VARIABLE}=1 to skip the end-to-end tests)", pytrace=False)


@pytest.fixture(scope="session")
def control_plane_binaries() -> Binaries:
    return locate_binaries_or_fail()


@pytest.fixture(scope="session")
def controller_binaries() -> ControllerBinaries:
    """kube-controller-manager, kube-scheduler and kwok, for a ControlPlane(controllers=...)."""
    return locate_or_fail(ControllerBinaries.locate)


@pytest.fixture(scope="session")
def control_plane(control_plane_binaries: Binaries) -> Iterator[ControlPlane]:
    # The apiserver's log says why a webhook call failed; set the variable to keep it.
    log_dir = os.environ.get(LOG_DIR_VARIABLE)
    with ControlPlane(binaries=control_plane_binaries, keep_logs_in=Path(log_dir) if log_dir else None,
                      audit_workloads=True) as plane:
        yield plane


@pytest.fixture(scope="session")
def kube_api(control_plane: ControlPlane) -> Iterator[kubernetes.client.ApiClient]:
    """An ApiClient authenticated as the cluster admin (group system:masters)."""
    with control_plane.api_client() as client:
        yield client


@pytest.fixture(scope="session")
def kube_rest(kube_api: kubernetes.client.ApiClient) -> KubeRest:
    """Admin JSON requests that keep the raw body and the Warning headers."""
    return KubeRest(kube_api)


@pytest.fixture(scope="session")
def wired_webhook(
    control_plane: ControlPlane, kube_api: kubernetes.client.ApiClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WiredWebhook]:
    """`energetiscope serve` as a real process, called by the apiserver through deploy/'s
    webhook configurations (see tests/e2e/webhook_fixtures.py). One for the session:
    starting it and waiting for the apiserver to call it takes seconds."""
    yield from iterate_webhook(control_plane, kube_api, tmp_path_factory.mktemp("webhook"))
