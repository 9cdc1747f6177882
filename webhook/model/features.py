"""InferenceRequest -> feature vector: one transformer for training and serving.

The prototype embedded specs as text, so a 64-core pod and a 0.1-core pod looked alike to
its cosine distance. Here resources are numbers on a log scale, standardised on the
training set, so distances see magnitude; kinds and classes are one-hot; image names and
commands become hashed token counts, a cheap stand-in for what a text embedding captures.
Each block has a weight so the trainer can trade them off.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable, Sequence

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils import murmurhash3_32

from webhook.model.arrays import require_fitted
from webhook.model.extract import is_gpu_resource
from webhook.model.gpus import gpu_product
from webhook.model.llm import NUMERIC_FIELDS as LLM_NUMERIC_FEATURES
from webhook.model.llm import llm_serving
from webhook.model.prior import PHYSICS_COLUMNS, PriorCoefficients, physics_row, physics_rows
from webhook.model.resources import pod_totals
from webhook.model.schema import InferenceRequest

# Bump when the meaning of the feature vector changes: artifacts record it and the server
# refuses an artifact built for another version instead of predicting nonsense.
# 2: physics columns first; GPU product power, LLM-serving arguments, the GPU product.
# 3: words for a pod's host access (`host_access_tokens`). Artifacts of version 2 still load and
#    encode as they were trained: without those words (`SUPPORTED_FEATURE_VERSIONS`).
# 4: the physics column `runs_to_completion`. Artifacts of versions 2 and 3 encode without it: their
#    physics block is one column narrower (`physics_width`), and every column after it one to the left.
FEATURE_VERSION = 4
SUPPORTED_FEATURE_VERSIONS = (2, 3, 4)
HOST_ACCESS_SINCE_VERSION = 3
RUNS_TO_COMPLETION_SINCE_VERSION = 4

NUMERIC_FEATURES = (
    "cpu_request_millicores",
    "cpu_limit_millicores",
    "memory_request_mib",
    "memory_limit_mib",
    "gpu_count",
    "other_extended_resources",
    "running_containers",
    "init_containers",
    "native_sidecars",
    "volumes",
    "containers_without_cpu_request",
    "containers_without_memory_request",
    "gpu_max_watts",
    *LLM_NUMERIC_FEATURES,
)
# What a run's length depends on besides its pods (Jobs, CronJobs' job templates), for the run model:
# the apiserver's defaults where unset (completions and parallelism 1, backoffLimit 6), no deadline 0.
# Numbers in a batch pod's arguments often state its work (`--epochs 3`, `--partitions 64`,
# `--max-steps 10000`, `SHARDS=8`): each flag's value is summed into one of a few slots by the
# flag's hashed name, so that the run model can learn a run's length from them without a table
# of tools. A number that states no work (a port) lands in a slot whose slope the data leaves at 0.
ARGUMENT_NUMBER_SLOTS = 16
RUN_NUMERIC_FEATURES = (
    "completions",
    "parallelism",
    "backoff_limit",
    "active_deadline_seconds",
    "indexed_completion",
    *(f"argument_number_{slot}" for slot in range(ARGUMENT_NUMBER_SLOTS)),
)
DEFAULT_BACKOFF_LIMIT = 6
# The numerics that say how much of a thing a pod is, rather than what it is: among neighbours of
# one kind (the same words, the same classes) power moves with these, so `AnchoredKNN` fits their
# local slopes (`local_columns`). Left out: bookkeeping that moves power little (limits on memory,
# volumes, init containers, which containers omit requests). Grouped CV, mean |log error| of a
# local ridge over these against over every numeric column: ML.ENERGY 0.163 against 0.163, the
# simulated cluster 0.314 against 0.335 (bench/README.md, accuracy).
LOCAL_REGRESSION_FEATURES = (
    "cpu_request_millicores",
    "cpu_limit_millicores",
    "memory_request_mib",
    "running_containers",
    "native_sidecars",
    "gpu_count",
    "gpu_max_watts",
    *LLM_NUMERIC_FEATURES,
)
DEFAULT_COEFFICIENTS = PriorCoefficients()  # the physics columns read the embedded defaults (100 m, 128 MiB)
CATEGORICAL_FEATURES = ("workload_kind", "runtime_class", "instance_type", "node_type", "priority_class", "gpu_product")
# Labels that name the application; the rest (versions, chart revisions, hashes) are noise.
APP_NAME_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/component", "app", "k8s-app", "component")

_TOKEN_SPLIT = re.compile(r"[^a-z0-9]+")


def _image_tokens(image: str) -> list[str]:
    image = image.split("@", 1)[0].lower()
    path = image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image
    parts = path.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        parts = parts[1:]  # the registry says where the image lives, not what it does
    tokens = list(parts)
    for part in parts:
        tokens.extend(t for t in _TOKEN_SPLIT.split(part) if t)
    return tokens


def _words(text: str) -> list[str]:
    return [t for t in _TOKEN_SPLIT.split(text.lower()) if len(t) > 1 and not t.isdigit()]


def physics_width(feature_version: int = FEATURE_VERSION) -> int:
    """How many `PHYSICS_COLUMNS` an encoder of this feature version writes (the first ones)."""
    return len(PHYSICS_COLUMNS) - (feature_version < RUNS_TO_COMPLETION_SINCE_VERSION)


def local_regression_columns() -> tuple[int, ...]:
    """Where `LOCAL_REGRESSION_FEATURES` sit in the encoder's output (the same with `run_fields`:
    the run numerics come after the pod's)."""
    return tuple(len(PHYSICS_COLUMNS) + NUMERIC_FEATURES.index(name) for name in LOCAL_REGRESSION_FEATURES)


def run_local_columns() -> tuple[int, ...]:
    """The run model's local slope columns: the run fields (argument numbers among them) and the
    pod's resource columns, where the run pipeline's encoder puts them."""
    start = len(PHYSICS_COLUMNS) + len(NUMERIC_FEATURES)
    return local_regression_columns() + tuple(range(start, start + len(RUN_NUMERIC_FEATURES)))


def numeric_columns(run_fields: bool = False) -> tuple[int, ...]:
    """Where the numeric block sits in the encoder's output: left out of the neighbour search by
    the candidates that choose neighbours by words and classes alone."""
    width = len(NUMERIC_FEATURES) + (len(RUN_NUMERIC_FEATURES) if run_fields else 0)
    return tuple(range(len(PHYSICS_COLUMNS), len(PHYSICS_COLUMNS) + width))


def request_tokens(request: InferenceRequest, host_access: bool = True) -> list[str]:
    """Words that describe what the pod runs: image names, command words, app labels, and with
    `host_access` what it takes from the node (`host_access_tokens`)."""
    tokens: list[str] = []
    for container in request.containers:
        tokens.extend(f"img:{t}" for t in _image_tokens(container.image))
        for arg in (container.command or [])[:8] + (container.args or [])[:16]:
            tokens.extend(f"cmd:{t}" for t in _words(arg.rsplit("/", 1)[-1]))
    for key in APP_NAME_LABELS:
        if key in request.labels:
            tokens.extend(f"app:{t}" for t in _words(request.labels[key]))
    if host_access:
        tokens.extend(host_access_tokens(request))
    return tokens


def host_access_tokens(request: InferenceRequest) -> list[str]:
    """The node's namespaces a pod shares, its privileged containers and the capabilities they add.

    Node agents ask for these and applications seldom do, and among them are a cluster's busiest
    pods (Kepler on the seed cluster, ../shared/data/seed-kepler: the cilium agent 1.5 W, weave
    scope's agent 6.9 W, where most services draw 0.01-0.2 W), though not all (kube-proxy, 0.02 W):
    the words only let the model find such pods, their measured neighbours say how busy they are.
    Each is one word, so a capability is not split into parts.
    """
    tokens = [f"host:{namespace}" for namespace in request.host_namespaces]
    for container in request.containers:
        if container.privileged:
            tokens.append("sec:privileged")
        tokens.extend(f"cap:{capability.lower()}" for capability in container.capabilities_added)
    return tokens


def numeric_row(request: InferenceRequest) -> list[float]:
    # Defaults of 0: the model learns what "no request" means from the indicator columns.
    totals = pod_totals(request, 0.0, 0.0)
    gpus = request.gpu_count
    other = sum(v for k, v in request.extended_resources.items() if not is_gpu_resource(k))
    gpu_max_watts = gpu_product(request.gpu_product).max_watts if gpus else 0.0
    return [
        totals.cpu_request_millicores,
        totals.cpu_limit_millicores,
        totals.memory_request_mib,
        totals.memory_limit_mib,
        gpus,
        other,
        len(request.containers),
        request.init_container_count,
        request.sidecar_count,
        len(request.volume_types),
        totals.containers_without_cpu_request,
        totals.containers_without_memory_request,
        gpu_max_watts,
        *llm_serving(request).numeric(),
    ]


def run_numeric_row(request: InferenceRequest) -> list[float]:
    return [
        1.0 if request.completions is None else float(request.completions),
        1.0 if request.parallelism is None else float(request.parallelism),
        float(DEFAULT_BACKOFF_LIMIT if request.backoff_limit is None else request.backoff_limit),
        float(request.active_deadline_seconds or 0.0),
        1.0 if request.completion_mode == "Indexed" else 0.0,
        *argument_numbers(request),
    ]


_ASSIGNMENT = re.compile(r"^-{0,2}([A-Za-z][\w.-]*)=([0-9][0-9_]*(?:\.[0-9]+)?)$")
_NUMBER = re.compile(r"^[0-9][0-9_]*(?:\.[0-9]+)?$")


def argument_numbers(request: InferenceRequest) -> list[float]:
    """The numeric values of `--flag N`, `--flag=N` and `NAME=N` in the containers' commands and
    arguments, summed per slot of `ARGUMENT_NUMBER_SLOTS` by the flag's hashed name."""
    slots = [0.0] * ARGUMENT_NUMBER_SLOTS
    for container in request.containers:
        words = [part for word in [*(container.command or []), *(container.args or [])] for part in word.split()]
        for i, word in enumerate(words):
            assigned = _ASSIGNMENT.match(word)
            if assigned:
                name, value = assigned.groups()
            elif word.startswith("-") and i + 1 < len(words) and _NUMBER.match(words[i + 1]):
                name, value = word.lstrip("-"), words[i + 1]
            else:
                continue
            slot = murmurhash3_32(name.lower(), positive=True) % ARGUMENT_NUMBER_SLOTS
            slots[slot] += float(value.replace("_", ""))
    return slots


def categorical_row(request: InferenceRequest) -> list[str]:
    return [str(getattr(request, name) or "") for name in CATEGORICAL_FEATURES]


def as_requests(items: Iterable[Any]) -> list[InferenceRequest]:
    """Accept InferenceRequests or their dict form (NDJSON rows, DataFrame records)."""
    return [item if isinstance(item, InferenceRequest) else InferenceRequest.model_validate(item) for item in items]


class PodFeatureEncoder(TransformerMixin, BaseEstimator, auto_wrap_output_keys=None):
    """Fit on training requests; transform any requests to a dense float32 matrix.

    Columns: first the physics the prior reads (`PHYSICS_COLUMNS`, raw, in their units: the
    final estimator takes them out of the distance and anchors on them), then standardised
    log1p numerics, one-hot categoricals (unknown -> all zero) and L2-normalised hashed token
    counts. Block weights scale each block's share of the Euclidean distance.

    The output is always a numpy array (`auto_wrap_output_keys=None`: no `set_output`, whose
    wrapper around `transform` cost ~3.5 us a call and which the model's steps cannot read).
    """

    def __init__(
        self,
        numeric_weight: float = 1.0,
        categorical_weight: float = 1.0,
        text_weight: float = 1.0,
        text_dimensions: int = 128,
        run_fields: bool = False,
    ) -> None:
        self.numeric_weight = numeric_weight
        self.categorical_weight = categorical_weight
        self.text_weight = text_weight
        self.text_dimensions = text_dimensions
        self.run_fields = run_fields

    def numeric_features(self) -> tuple[str, ...]:
        """The numeric columns' names: `NUMERIC_FEATURES`, then `RUN_NUMERIC_FEATURES` with `run_fields`."""
        return NUMERIC_FEATURES + (RUN_NUMERIC_FEATURES if self.run_fields else ())

    def _numeric(self, requests: Sequence[InferenceRequest]) -> np.ndarray:
        rows = [numeric_row(r) + (run_numeric_row(r) if self.run_fields else []) for r in requests]
        return np.log1p(np.asarray(rows, dtype=np.float64).reshape(len(requests), -1))

    def fit(self, X: Iterable[Any], y: Any = None) -> "PodFeatureEncoder":
        requests = as_requests(X)
        if not requests:
            raise ValueError("PodFeatureEncoder.fit needs at least one InferenceRequest")
        numeric = self._numeric(requests)
        self.numeric_mean_ = numeric.mean(axis=0)
        std = numeric.std(axis=0)
        # A constant column carries no information; scale 1 keeps it at 0 instead of dividing by 0.
        self.numeric_scale_ = np.where(std > 1e-9, std, 1.0)
        self.categories_ = [sorted({categorical_row(r)[column] for r in requests})
                            for column in range(len(CATEGORICAL_FEATURES))]
        self.feature_version_ = FEATURE_VERSION
        self._index_categories()
        return self

    def _index_categories(self) -> None:
        offset = 0
        self.category_index_: list[dict[str, int]] = []
        for values in self.categories_:
            self.category_index_.append({value: offset + i for i, value in enumerate(values)})
            offset += len(values)
        self.n_categorical_ = offset
        self.n_physics_ = physics_width(self.feature_version_)
        self.n_features_out_ = self.n_physics_ + len(self.numeric_features()) + offset + self.text_dimensions

    def transform(self, X: Iterable[Any]) -> np.ndarray:
        require_fitted(self, "numeric_mean_")
        requests = as_requests(X)
        n = len(requests)
        if n == 0:
            return np.zeros((0, self.n_features_out_), dtype=np.float32)
        n_physics = self.n_physics_
        numeric_end = n_physics + len(self.numeric_features())
        numeric = self.numeric_weight * (self._numeric(requests) - self.numeric_mean_) / self.numeric_scale_
        out = np.zeros((n, self.n_features_out_), dtype=np.float32)
        if n == 1:
            # One spec (a cache miss): written through a 1-d view, the physics from a tuple, with no
            # 1 x 8 array of them first (same casts of the same doubles to float32). With the unwrapped
            # `transform` and llm.py's serving test: 395,000 -> 357,000 instructions a transform
            # (valgrind --tool=callgrind over 2,000 of bench.admission_body's specs).
            row = out[0]
            row[:n_physics] = physics_row(requests[0], DEFAULT_COEFFICIENTS)[:n_physics]
            row[n_physics:numeric_end] = numeric[0]
            for column, value in self._sparse_entries(requests[0], numeric_end):
                row[column] = value
            return out
        out[:, :n_physics] = physics_rows(requests, DEFAULT_COEFFICIENTS)[:, :n_physics]
        out[:, n_physics:numeric_end] = numeric
        for row_index, request in enumerate(requests):
            for column, value in self._sparse_entries(request, numeric_end):
                out[row_index, column] = value
        return out

    def _sparse_entries(self, request: InferenceRequest, numeric_end: int) -> list[tuple[int, float]]:
        """(column, value) of a request's nonzero categorical and hashed-word columns."""
        entries = []
        for column, value in enumerate(categorical_row(request)):
            index = self.category_index_[column].get(value)
            if index is not None:
                entries.append((numeric_end + index, self.categorical_weight))
        # A pod has a handful of tokens: counted in a dict, not a 128-wide array and its norm
        # (np.linalg.norm alone was 3.6% of a loaded server's CPU on cache misses, py-spy).
        counts: dict[int, float] = {}
        for token in request_tokens(request, self.feature_version_ >= HOST_ACCESS_SINCE_VERSION):
            bucket = murmurhash3_32(token, positive=True) % self.text_dimensions
            counts[bucket] = counts.get(bucket, 0.0) + 1.0
        if counts:
            text_start = numeric_end + self.n_categorical_
            scale = self.text_weight / math.sqrt(sum(c * c for c in counts.values()))
            entries.extend((text_start + bucket, count * scale) for bucket, count in counts.items())
        return entries

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        require_fitted(self, "numeric_mean_")
        names = [f"physics:{name}" for name in PHYSICS_COLUMNS[:self.n_physics_]] + list(self.numeric_features())
        for column, values in zip(CATEGORICAL_FEATURES, self.categories_):
            names.extend(f"{column}={value}" for value in values)
        names.extend(f"token_hash_{i}" for i in range(self.text_dimensions))
        return np.asarray(names, dtype=object)

    def to_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Fitted state as (JSON, arrays), for `webhook.model.artifact`."""
        require_fitted(self, "numeric_mean_")
        return ({"categories": self.categories_, "feature_version": self.feature_version_},
                {"numeric_mean": self.numeric_mean_, "numeric_scale": self.numeric_scale_})

    def set_state(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> "PodFeatureEncoder":
        self.numeric_mean_ = np.asarray(arrays["numeric_mean"], dtype=np.float64)
        self.numeric_scale_ = np.asarray(arrays["numeric_scale"], dtype=np.float64)
        width = len(self.numeric_features())
        if self.numeric_mean_.shape != (width,) or self.numeric_scale_.shape != (width,):
            raise ValueError(f"numeric_mean and numeric_scale must hold {width} values")
        self.categories_ = [[str(v) for v in values] for values in state["categories"]]
        if len(self.categories_) != len(CATEGORICAL_FEATURES):
            raise ValueError(f"categories must list {len(CATEGORICAL_FEATURES)} columns")
        self.feature_version_ = int(state["feature_version"])
        if self.feature_version_ not in SUPPORTED_FEATURE_VERSIONS:
            raise ValueError(f"feature_version {self.feature_version_} is not one of {list(SUPPORTED_FEATURE_VERSIONS)}")
        self._index_categories()
        return self
