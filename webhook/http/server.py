"""Run the webhook: its settings, the application they make, and uvicorn listening over TLS.

Loading at start and reloading on SIGHUP or a file change are the lifespan's (``lifespan.py``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette

from webhook.admission.inventory import InventoryWatcher, WorkloadInventory
from webhook.admission.mutate import MutationSettings
from webhook.admission.policy import PolicyStore
from webhook.admission.validate import Budgets
from webhook.http.app import create_app
from webhook.http.body import DEFAULT_MAX_BODY_BYTES
from webhook.http.lifespan import Reloadable, WebhookLifespan
from webhook.http.protocol import ReviewHttpProtocol
from webhook.http.state import AppSettings, app_state
from webhook.http.tls import ServingCertificates
from webhook.model.prior import PriorCoefficients, PriorPredictor
from webhook.model.service import PredictionService

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeSettings:
    cert_dir: Path
    host: str = "0.0.0.0"
    port: int = 8443
    model_path: Path | None = None
    model_sha256: str | None = None
    log_level: str = "info"
    access_log: bool = False
    watch_interval_seconds: float = 5.0
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    cache_entries: int = 4096
    mutation: MutationSettings = MutationSettings()
    prior: PriorCoefficients = field(default_factory=PriorCoefficients)
    policy_file: Path | None = None
    # Where the budget inventory reads the cluster: "auto" (in-cluster when running in a pod),
    # "off", or a kubeconfig path.
    kube_access: str = "auto"
    review_timeout_seconds: float = 2.0
    max_concurrent_reviews: int = 8
    prediction_process: bool = True  # a trained model's cache misses in a process of its own
    # Connections beyond this get HTTP 503 at once, which the apiserver treats per failurePolicy.
    max_connections: int = 1000
    debug_endpoints: bool = True
    workload_metrics_max_series: int = 0  # energetiscope_workload_predicted_watts series; 0: none

    @property
    def cert_file(self) -> Path:
        return self.cert_dir / "tls.crt"

    @property
    def key_file(self) -> Path:
        return self.cert_dir / "tls.key"


def _api_client(kube_access: str) -> Any | None:
    """The client ``--kube-access`` asks for: none when off, or when auto and not in a pod."""
    if kube_access == "off" or (kube_access == "auto" and not os.environ.get("KUBERNETES_SERVICE_HOST")):
        return None
    from webhook import kube  # the kubernetes client loads only when the webhook reads the cluster

    return kube.api_client(in_cluster=True) if kube_access == "auto" else kube.api_client(kube_access)


def build_app(settings: ServeSettings, certificates: ServingCertificates | None = None) -> Starlette:
    service = PredictionService(
        PriorPredictor(settings.prior),
        model_path=settings.model_path,
        expected_sha256=settings.model_sha256,
        cache_entries=settings.cache_entries,
    )
    policy = PolicyStore(settings.policy_file)
    api_client = _api_client(settings.kube_access)
    inventory = WorkloadInventory() if api_client is not None else None
    reloadables: dict[str, Reloadable] = {"model": service, "policy": policy}
    if certificates is not None:
        reloadables["certificate"] = certificates

    def inventory_watcher() -> InventoryWatcher | None:
        return InventoryWatcher(inventory, api_client) if inventory is not None else None

    app = create_app(
        service,
        AppSettings(
            max_body_bytes=settings.max_body_bytes,
            mutation=settings.mutation,
            review_timeout_seconds=settings.review_timeout_seconds,
            max_concurrent_reviews=settings.max_concurrent_reviews,
            prediction_process=settings.prediction_process,
            debug_endpoints=settings.debug_endpoints,
            workload_metrics_max_series=settings.workload_metrics_max_series,
        ),
        Budgets(policy=policy, inventory=inventory),
        lifespan=WebhookLifespan(reloadables, settings.watch_interval_seconds, inventory_watcher),
    )
    if certificates is not None:
        serving = certificates
        app_state(app).metrics.watch_certificate(lambda: serving.not_after_timestamp)
    return app


class _RotatingTLSConfig(uvicorn.Config):
    """Uvicorn's config, listening with a context whose certificate can be rotated."""

    def __init__(self, *args: Any, certificates: ServingCertificates, **kwargs: Any) -> None:
        self.certificates = certificates
        super().__init__(*args, **kwargs)

    def load(self) -> None:
        super().load()
        self.ssl = self.certificates.listening_context()


def tls_server_config(
    app: Any, certificates: ServingCertificates, *, host: str, port: int, log_level: str = "info",
    access_log: bool = False, max_connections: int | None = None,
) -> uvicorn.Config:
    """How the webhook listens (the benchmarks' reference server listens the same way)."""
    return _RotatingTLSConfig(
        app,
        certificates=certificates,
        host=host,
        port=port,
        ssl_certfile=str(certificates.cert_file),
        ssl_keyfile=str(certificates.key_file),
        log_level=log_level,
        access_log=access_log,
        lifespan="on",
        # uvloop and httptools (dependencies): the pure-Python h11 and asyncio double the CPU per
        # review (bench/README.md). The httptools protocol writes each answer at once (protocol.py).
        loop="auto",
        http=ReviewHttpProtocol,
        server_header=False,
        limit_concurrency=max_connections,
        # SIGTERM: stop accepting, let reviews in flight finish, then exit.
        timeout_graceful_shutdown=20,
    )


def serve(settings: ServeSettings) -> None:
    for path in (settings.cert_file, settings.key_file):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: create certificates with 'energetiscope certs create --out {settings.cert_dir} ...'"
            )
    certificates = ServingCertificates(settings.cert_file, settings.key_file)
    config = tls_server_config(
        build_app(settings, certificates),
        certificates,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=settings.access_log,
        max_connections=settings.max_connections,
    )
    uvicorn.Server(config).run()
