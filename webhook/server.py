"""Run the webhook: TLS, model loading at start, reload on SIGHUP or artifact change."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator

import anyio
import uvicorn
from starlette.applications import Starlette

from .admission import MutationSettings
from .app import DEFAULT_MAX_BODY_BYTES, AppSettings, create_app
from .prior import PriorCoefficients, PriorPredictor
from .service import PredictionService

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

    @property
    def cert_file(self) -> Path:
        return self.cert_dir / "tls.crt"

    @property
    def key_file(self) -> Path:
        return self.cert_dir / "tls.key"


async def _reload(service: PredictionService, app: Starlette, reason: str) -> None:
    log.info("reloading model (%s)", reason)
    ok = await anyio.to_thread.run_sync(service.load)
    app.state.metrics.model_reloads.labels("ok" if ok and service.status().error is None else "failed").inc()


def build_app(settings: ServeSettings) -> Starlette:
    service = PredictionService(
        PriorPredictor(settings.prior),
        model_path=settings.model_path,
        expected_sha256=settings.model_sha256,
        cache_entries=settings.cache_entries,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Uvicorn has loaded the certificate by the time the lifespan starts.
        await anyio.to_thread.run_sync(service.load)
        app.state.readiness["tls_ready"] = True
        wake = asyncio.Event()
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, wake.set)

        async def watch() -> None:
            while True:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout=settings.watch_interval_seconds)
                if wake.is_set():
                    wake.clear()
                    await _reload(service, app, "SIGHUP")
                elif service.artifact_changed():
                    await _reload(service, app, "artifact changed on disk")

        task = asyncio.create_task(watch())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signal.SIGHUP)

    app = create_app(service, AppSettings(max_body_bytes=settings.max_body_bytes, mutation=settings.mutation))
    app.router.lifespan_context = lifespan
    return app


def serve(settings: ServeSettings) -> None:
    for path in (settings.cert_file, settings.key_file):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: create certificates with 'energetiscope certs create --out {settings.cert_dir} ...'"
            )
    config = uvicorn.Config(
        build_app(settings),
        host=settings.host,
        port=settings.port,
        ssl_certfile=str(settings.cert_file),
        ssl_keyfile=str(settings.key_file),
        log_level=settings.log_level.lower(),
        access_log=settings.access_log,
        lifespan="on",
        server_header=False,
        timeout_graceful_shutdown=20,
    )
    uvicorn.Server(config).run()
