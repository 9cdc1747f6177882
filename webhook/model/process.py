"""Cache misses predicted in a process of their own, so that the model never contends with the
event loop for the GIL.

A miss used to be predicted in a worker thread. The model's numpy and BLAS calls release the
GIL a few dozen times a prediction, and each time the event loop, busy with the other
connections' TLS and HTTP, took it: about 50 context switches a miss, and the loaded server's
CPU a miss grew from ~960 us at one connection to ~1,550 at 16 (50,000-row model, 512 specs,
wrk; minor faults 0, so not memory). The same server with each miss sent to a child process
over a socket, its answer read by the loop when it arrives (no thread at all): 2,451 req/s at
16 connections against 733, p99 11 against 34 ms, ~370 us of the server's CPU a miss plus ~330
in the child (a scratch prototype; bench/README.md, table admission_load, for the shipped one).

The child loads the artifact that serves, checked against its sha256, so both predict alike
(tests/webhook/test_prediction_process.py compares them to the bit); until it says it is ready,
and whenever it cannot take a request, the caller predicts in a worker thread as before
(`ProcessUnavailable`). It is started with "spawn": forking a server whose threads may hold
locks would copy them held. What crosses the socket is an InferenceRequest as JSON one way and
a list of answers, each a `PodPrediction` or a `PredictionFailed` (plain fields, pickled by the
child this server started), the other:
the child predicts every request waiting when it looks as one block (`answers`); requests
are answered in the order sent, and each answer is handed to its `on_answer` even when its
review has stopped waiting (a slow model's late answer is still cached, as a worker thread's
was). At most `max_outstanding` requests and `max_outstanding_bytes` are unanswered at once, well
inside the socket's buffer (the kernel counts each message's overhead too: ~90 requests of ~1 KB
filled a default socket pair), so that sending never blocks the loop. When the oldest request has
waited `slow_seconds`, the requests queued behind it and new ones fail over at once (with worker
threads, one stuck prediction held one slot, not every miss); a child that holds a request longer
than `stuck_seconds`, or is not ready within `start_seconds`, is stopped, and its requests fail over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING

from webhook.collector import freeze_long_lived_objects
from webhook.model.prediction import PodPrediction
if TYPE_CHECKING:
    from webhook.model.artifact import TrainedModel
from webhook.model.prior import PriorPredictor
from webhook.model.schema import InferenceRequest

log = logging.getLogger(__name__)

# Unanswered requests at once: a Linux socket pair's send buffer (~208 KiB by default) held 93
# messages of 706-1,000 bytes before a send blocked, each charged its allocation overhead as well
# as its bytes; requests are ~1-4 KB of JSON. Both bounds keep a send from ever waiting.
MAX_OUTSTANDING = 32
MAX_OUTSTANDING_BYTES = 64 * 1024
# New requests do not queue behind one unanswered this long: a prediction takes ~0.3 ms at
# 50,000 rows and ~1 ms at 1M, so eight queued take a few ms.
SLOW_SECONDS = 0.25
# A request unanswered this long means a stuck child: it is stopped. Above the reviews' time
# budget (2 s by default), so that what a slow model can still answer is not lost.
STUCK_SECONDS = 10.0
# A child not ready this long after it was started is stopped (it imports numpy and scikit-learn
# and loads the model: ~2 s for a 50,000-row one on this project's 2-core machine).
START_SECONDS = 120.0
STOP_SECONDS = 0.5


class ProcessUnavailable(RuntimeError):
    """The prediction process cannot take this request: predict in this process instead."""


@dataclass(frozen=True)
class PredictionFailed:
    """The child's answer when the model raised: the error, as text."""

    error: str


def serve_predictions(connection: Connection, model_path: str, sha256: str, prior: PriorPredictor) -> None:
    """The child: load the artifact, say so, then answer requests in order until the socket closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the server's to handle
    from webhook.model.artifact import load_model  # scikit-learn and numpy load here, in the child

    try:
        model = load_model(Path(model_path), prior=prior, expected_sha256=sha256)
    except Exception as exc:  # anything: the parent must hear why, and predicts itself meanwhile
        connection.send(("failed", str(exc)))
        return
    freeze_long_lived_objects()  # as the server does after a load: no full collections of the model
    connection.send(("ready", model.model_id))
    while True:
        try:
            batch = [connection.recv_bytes()]
            while connection.poll(0):  # every request already waiting: the parent bounds how many (`submit`)
                batch.append(connection.recv_bytes())
        except (EOFError, OSError):
            return
        connection.send(answers(model, batch))


def answers(model: TrainedModel, batch: list[bytes]) -> list[PodPrediction | PredictionFailed]:
    """The answer to each request of `batch` (InferenceRequest JSON), in order: its prediction, or
    why there is none. The requests that parse are predicted as one block, which costs less a
    request than one at a time (50,000-row model, 512 specs, parse included: 286 us alone, 215 in
    fours, 201 in eights) and predicts the same numbers to the bit (tests/webhook/test_one_row_paths.py);
    if the block raises, each is predicted alone, so one request's failure is its own."""
    replies: list[PodPrediction | PredictionFailed] = [PredictionFailed("not predicted")] * len(batch)
    parsed: list[tuple[int, InferenceRequest]] = []
    for index, data in enumerate(batch):
        try:
            parsed.append((index, InferenceRequest.model_validate_json(data)))
        except Exception as exc:
            replies[index] = PredictionFailed(f"{type(exc).__name__}: {exc}")
    try:
        for (index, _), prediction in zip(parsed, model.predict([request for _, request in parsed]), strict=True):
            replies[index] = prediction
    except Exception:
        for index, request in parsed:
            try:
                replies[index] = model.predict([request])[0]
            except Exception as exc:
                replies[index] = PredictionFailed(f"{type(exc).__name__}: {exc}")
    return replies


@dataclass
class _Pending:
    future: asyncio.Future[PodPrediction]
    size: int
    sent_at: float
    on_answer: Callable[[PodPrediction], None] | None


class PredictionProcess:
    """A child process serving one artifact's predictions to the event loop that made it.

    Made and used on the event loop (its answers are read there); `close` stops it.
    """

    def __init__(self, model_path: Path, sha256: str, prior: PriorPredictor, *,
                 max_outstanding: int = MAX_OUTSTANDING, max_outstanding_bytes: int = MAX_OUTSTANDING_BYTES,
                 slow_seconds: float = SLOW_SECONDS, stuck_seconds: float = STUCK_SECONDS,
                 start_seconds: float = START_SECONDS) -> None:
        self.sha256 = sha256
        self.max_outstanding = max_outstanding
        self.max_outstanding_bytes = max_outstanding_bytes
        self.slow_seconds = slow_seconds
        self.stuck_seconds = stuck_seconds
        self.start_seconds = start_seconds
        self.model_id: str | None = None  # the child's, once it is ready
        self.error: str | None = None  # why it ended, once it has
        self.ended_at: float | None = None  # time.monotonic() when it ended
        self.load_failed = False  # it could not load the artifact: the same file will not load again
        self.started_at = time.monotonic()
        self._pending: deque[_Pending] = deque()
        self._outstanding_bytes = 0
        self._loop = asyncio.get_running_loop()
        context = multiprocessing.get_context("spawn")
        self._connection, child_end = context.Pipe(duplex=True)
        self._process = context.Process(target=serve_predictions, args=(child_end, str(model_path), sha256, prior),
                                        name="energetiscope-predictions", daemon=True)
        self._process.start()
        child_end.close()
        self._loop.add_reader(self._connection.fileno(), self._readable)

    @property
    def ready(self) -> bool:
        if self.model_id is None and self.error is None and time.monotonic() - self.started_at > self.start_seconds:
            self._end(f"not ready within {self.start_seconds:g} s of its start")
        return self.model_id is not None and self.error is None

    @property
    def ended(self) -> bool:
        return self.error is not None

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def status(self) -> dict[str, object]:
        """For /readyz: starting, ready or ended, with the child's pid, model and error."""
        state = "ended" if self.ended else "ready" if self.ready else "starting"
        return {"state": state, "pid": self.pid, "model_id": self.model_id, "error": self.error}

    async def predict(self, request: InferenceRequest) -> PodPrediction:
        """The child's prediction (`submit`, awaited)."""
        return await self.submit(request)

    def submit(self, request: InferenceRequest,
               on_answer: Callable[[PodPrediction], None] | None = None) -> Awaitable[PodPrediction]:
        """Send `request` to the child: its prediction, to await, and handed to `on_answer` when it
        arrives, awaited or not. `ProcessUnavailable` at once when the child cannot take it (not
        ready, ended, too many requests unanswered, slow or stuck), and from the awaitable when the
        child ends, or falls behind, before answering."""
        if not self.ready:
            raise ProcessUnavailable(self.error or "the prediction process is starting")
        now = time.monotonic()
        if self._pending:
            waited = now - self._pending[0].sent_at
            if waited > self.stuck_seconds:
                self._end(f"a request unanswered for more than {self.stuck_seconds:g} s")
                raise ProcessUnavailable(self.error or "")
            if waited > self.slow_seconds:
                behind = f"its oldest request has waited {waited:.2f} s"
                for queued in list(self._pending)[1:]:  # kept, so that the answers still match in order
                    if not queued.future.done():
                        queued.future.set_exception(ProcessUnavailable(behind))
                raise ProcessUnavailable(behind)
        data = request.model_dump_json().encode()
        if (len(self._pending) >= self.max_outstanding
                or self._outstanding_bytes + len(data) > self.max_outstanding_bytes):
            raise ProcessUnavailable("the prediction process has as many requests as it may")
        pending = _Pending(self._loop.create_future(), len(data), now, on_answer)
        # A review that stopped waiting leaves no one to read a failure: read here, not logged as lost.
        pending.future.add_done_callback(lambda future: future.cancelled() or future.exception())
        self._pending.append(pending)
        self._outstanding_bytes += pending.size
        try:
            self._connection.send_bytes(data)
        except OSError as exc:
            self._end(f"sending to it failed: {exc}")
        # A review that stops waiting (its time budget) leaves the future: its answer is still
        # read, in order, and dropped.
        return asyncio.shield(pending.future)

    def _readable(self) -> None:
        try:
            while self._connection.poll():
                self._receive(self._connection.recv())
        except (EOFError, OSError) as exc:
            self._end(f"it ended ({type(exc).__name__}; exit code {self._process.exitcode})")
        except Exception as exc:  # a message that does not unpickle: later answers could not be matched
            self._end(f"an answer could not be read ({type(exc).__name__}: {exc})")

    def _receive(self, message: object) -> None:
        if self.model_id is None:
            match message:
                case ("ready", str(model_id)):
                    self.model_id = model_id
                    log.info("prediction process %s serves %s", self._process.pid, model_id)
                case ("failed", str(error)):
                    self.load_failed = True
                    self._end(f"it could not load the model: {error}")
                case _:
                    self._end(f"it said {type(message).__name__} before it was ready")
            return
        if not isinstance(message, list):
            self._end(f"it answered with a {type(message).__name__}")
            return
        for answer in message:
            if self.ended:
                return
            self._answer(answer)

    def _answer(self, message: object) -> None:
        """Hand one answer to the oldest request: the child answers in the order it was sent them."""
        if not self._pending:
            self._end("it answered a request it was not sent")
            return
        pending = self._pending.popleft()
        self._outstanding_bytes -= pending.size
        if isinstance(message, PodPrediction):
            if pending.on_answer is not None:
                pending.on_answer(message)
            if not pending.future.done():
                pending.future.set_result(message)
        elif isinstance(message, PredictionFailed):
            if not pending.future.done():
                pending.future.set_exception(RuntimeError(message.error))
        else:
            if not pending.future.done():
                pending.future.set_exception(ProcessUnavailable(f"answered with a {type(message).__name__}"))
            self._end(f"it answered with a {type(message).__name__}")

    def _end(self, why: str, level: int = logging.ERROR) -> None:
        """Stop the child; every request it holds fails over (`ProcessUnavailable`)."""
        if self.error is not None:
            return
        self.error = f"prediction process {self._process.pid}: {why}"
        self.ended_at = time.monotonic()
        log.log(level, "%s; cache misses are predicted in the server until it is replaced", self.error)
        self._stop()
        while self._pending:
            pending = self._pending.popleft()
            if not pending.future.done():
                pending.future.set_exception(ProcessUnavailable(self.error))
        self._outstanding_bytes = 0

    def _stop(self) -> None:
        # Called from `ready`, `submit` and the reader: it must not raise, whatever state the
        # socket or the child is in (a closed descriptor, a child already reaped).
        with contextlib.suppress(OSError, ValueError):
            self._loop.remove_reader(self._connection.fileno())
        with contextlib.suppress(OSError):
            self._connection.close()  # the child reads EOF and returns
        with contextlib.suppress(OSError):
            self._process.join(timeout=0)
            if self._process.is_alive():
                self._process.terminate()
                self._process.join(timeout=0.1)  # reaped now if it went at once; else by `close`

    def close(self) -> None:
        """Stop the child, waiting up to `STOP_SECONDS` for it to go."""
        if self.error is None:
            self._end("closed", logging.INFO)
        self._process.join(timeout=STOP_SECONDS)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(timeout=STOP_SECONDS)
