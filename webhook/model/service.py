"""The model runtime inside the webhook: which predictor answers, a cache, and reloads.

Reloads build the new predictor off to the side and swap one reference, so requests in
flight finish on the model they started with and none is dropped. A reload that fails
keeps the model already serving.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from webhook.files import WatchedFile
from webhook.lru import LRUCache
from webhook.model.prediction import PodPrediction, Predictor
from webhook.model.kinds import kind_named
from webhook.model.prior import PriorPredictor
from webhook.model.runs import NO_RUNS, Runs, predict_runs, predicts_run_time
from webhook.model.schema import InferenceRequest, spec_hash, workload_pods

log = logging.getLogger(__name__)

SECONDS_PER_HOUR = 3600.0
STEP_SECONDS = 60.0  # the prototype's pred_energy_step_j is per 60 s Prometheus step


@dataclass(frozen=True)
class WorkloadPrediction:
    request: InferenceRequest
    spec_hash: str
    pod: PodPrediction
    pods: int
    # Per-run and per-day figures (Jobs, CronJobs): computed from this request's run fields,
    # which the spec hash leaves out, so never taken from the pod cache.
    runs: Runs = NO_RUNS

    @property
    def scope(self) -> str:
        # A DaemonSet runs one pod per matching node; the node count is not in its spec.
        kind = kind_named(self.request.workload_kind)
        return "total" if kind is None else kind.scope

    @property
    def workload_power_watts(self) -> float:
        return self.pods * self.pod.power_watts

    @property
    def energy_joules_per_hour(self) -> float:
        return self.workload_power_watts * SECONDS_PER_HOUR

    @property
    def pod_energy_step_joules(self) -> float:
        return self.pod.power_watts * STEP_SECONDS


class PredictionCache(LRUCache[tuple[str, str], PodPrediction]):
    """Pod predictions keyed by (model id, spec hash)."""


@dataclass(frozen=True)
class ModelStatus:
    model_id: str
    basis: str  # what serves: "model" or "prior"
    path: str | None
    sha256: str | None
    error: str | None  # why the configured model is not serving, if it is not


class PredictionService:
    def __init__(
        self,
        prior: PriorPredictor,
        model_path: Path | None = None,
        expected_sha256: str | None = None,
        cache_entries: int = 4096,
    ) -> None:
        self.prior = prior
        self.model_path = model_path
        self.expected_sha256 = expected_sha256
        self.cache = PredictionCache(cache_entries)
        self._predictor: Predictor = prior
        self._error: str | None = None
        self._file = WatchedFile(model_path)
        self._reload_lock = threading.Lock()
        self.loaded = False

    @property
    def predictor(self) -> Predictor:
        return self._predictor

    def status(self) -> ModelStatus:
        predictor = self._predictor
        trained = predictor is not self.prior  # only a loaded artifact replaces the prior
        return ModelStatus(
            model_id=predictor.model_id,
            basis="model" if trained else "prior",
            path=str(self.model_path) if self.model_path else None,
            sha256=getattr(predictor, "sha256", None) if trained else None,
            error=self._error,
        )

    def load(self) -> bool:
        """(Re)load the configured artifact. False when it could not be loaded (see ``status().error``)."""
        with self._reload_lock:
            self.loaded = True
            if self.model_path is None:
                self._predictor, self._error = self.prior, None
                return True
            self._file.mark_seen()
            # Here, not at import: scikit-learn takes ~1.2 s to import, which every offline
            # `predict` and `diff` with the prior alone would pay for nothing.
            from webhook.model.artifact import ArtifactError, load_model

            try:
                model = load_model(self.model_path, prior=self.prior, expected_sha256=self.expected_sha256)
            except ArtifactError as exc:
                self._error = str(exc)
                if self._predictor is not self.prior:
                    log.error("model reload failed, keeping %s: %s", self._predictor.model_id, exc)
                else:
                    log.error("model not loaded, serving the prior %s: %s", self.prior.model_id, exc)
                return False
            self._predictor, self._error = model, None
            log.info("model %s loaded from %s (sha256 %s)", model.model_id, self.model_path, model.sha256)
            return True

    def artifact_changed(self) -> bool:
        return self._file.changed()

    def predict(self, request: InferenceRequest, hash_: str | None = None) -> WorkloadPrediction:
        predictor = self._predictor  # one read: a concurrent reload cannot mix two models
        hash_ = hash_ or spec_hash(request)
        return _workload(request, hash_, self._pod(predictor, request, hash_), predictor)

    def _pod(self, predictor: Predictor, request: InferenceRequest, hash_: str) -> PodPrediction:
        key = _cache_key(predictor, hash_)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        prediction = predictor.predict([request])[0]
        self.cache.put(key, prediction)
        return prediction

    def pod_alone(self, request: InferenceRequest, predictor: Predictor) -> bool:
        """Whether `predictor`'s prediction of `request` is its pod prediction alone: not when a run
        model times the request's runs (its run time is not in the pod cache)."""
        return not (_runs_to_completion(request) and predicts_run_time(predictor))

    def cached(self, request: InferenceRequest, hash_: str | None = None) -> WorkloadPrediction | None:
        """The prediction when the cache holds it, else None: never runs the model, so it is
        cheap enough for the event loop."""
        predictor = self._predictor
        if not self.pod_alone(request, predictor):
            return None  # it runs in a worker thread
        hash_ = hash_ or spec_hash(request)
        pod = self.cache.get(_cache_key(predictor, hash_), count_miss=False)
        if pod is None:
            return None
        return _workload(request, hash_, pod, predictor)

    def remember(self, predictor: Predictor, hash_: str, pod: PodPrediction) -> None:
        """Cache `pod`, `predictor`'s prediction for the spec `hash_` made out of this process
        (`webhook.model.process`; the caller counted the miss: `cache.record_miss`)."""
        self.cache.put(_cache_key(predictor, hash_), pod)

    def workload(self, request: InferenceRequest, hash_: str, pod: PodPrediction,
                 predictor: Predictor) -> WorkloadPrediction:
        """The workload's prediction from its pod's."""
        return _workload(request, hash_, pod, predictor)


def _cache_key(predictor: Predictor, hash_: str) -> tuple[str, str]:
    return (predictor.model_id, hash_)


def _runs_to_completion(request: InferenceRequest) -> bool:
    kind = kind_named(request.workload_kind)
    return kind is not None and kind.runs != "none"


def _workload(request: InferenceRequest, hash_: str, pod: PodPrediction, predictor: Predictor) -> WorkloadPrediction:
    pods = workload_pods(request)
    return WorkloadPrediction(request=request, spec_hash=hash_, pod=pod, pods=pods,
                              runs=predict_runs(request, pod, pods, predictor))
