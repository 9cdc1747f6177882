"""What runs around serving: load at start, reload while serving, stop the inventory at the end.

At start (uvicorn has loaded the certificate by then) the model, the budget policy and the
certificate are loaded, everything alive is frozen out of the cyclic garbage collector, the
budget inventory starts, and the app reports ready. While serving, each of them is reloaded on
``SIGHUP`` or when its file changes (checked every ``watch_interval_seconds``); a reload that
fails keeps what is serving. At shutdown the inventory's watches are closed and the prediction
process (`webhook.model.process`) is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Protocol

import anyio
from starlette.applications import Starlette

from webhook.collector import freeze_long_lived_objects
from webhook.http.state import AppState, app_state

log = logging.getLogger(__name__)


class Reloadable(Protocol):
    def artifact_changed(self) -> bool: ...

    def load(self) -> bool: ...


class Stoppable(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


class WebhookLifespan:
    """Starlette's lifespan for the webhook: ``Starlette(lifespan=WebhookLifespan(...))``."""

    def __init__(
        self,
        reloadables: Mapping[str, Reloadable],
        watch_interval_seconds: float,
        background: Callable[[], Stoppable | None] = lambda: None,
    ) -> None:
        self.reloadables = reloadables
        self.watch_interval_seconds = watch_interval_seconds
        # Made at start, after the loads: the budget inventory's watcher, when the webhook reads the cluster.
        self.background = background

    def __call__(self, app: Starlette) -> contextlib.AbstractAsyncContextManager[None]:
        return self._serving(app_state(app))

    @contextlib.asynccontextmanager
    async def _serving(self, state: AppState) -> AsyncIterator[None]:
        for item in self.reloadables.values():
            await anyio.to_thread.run_sync(item.load)
        freeze_long_lived_objects()
        state.pipeline.start_prediction_process()
        worker = self.background()
        if worker is not None:
            worker.start()
        state.tls_ready = True
        hangup = asyncio.Event()
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, hangup.set)
        task = asyncio.create_task(self._watch(state, hangup))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signal.SIGHUP)
            if worker is not None:
                await anyio.to_thread.run_sync(worker.stop)
            state.pipeline.close()

    async def _watch(self, state: AppState, hangup: asyncio.Event) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(hangup.wait(), timeout=self.watch_interval_seconds)
            everything = hangup.is_set()
            hangup.clear()
            for name, item in self.reloadables.items():
                if everything:
                    await self._reload(state, name, item, "SIGHUP")
                elif item.artifact_changed():
                    await self._reload(state, name, item, "file changed on disk")

    async def _reload(self, state: AppState, name: str, item: Reloadable, reason: str) -> None:
        log.info("reloading %s (%s)", name, reason)
        ok = await anyio.to_thread.run_sync(item.load)
        state.metrics.reloads.labels(name, "ok" if ok else "failed").inc()
        if ok and name == "model":
            freeze_long_lived_objects()
            state.pipeline.start_prediction_process()



