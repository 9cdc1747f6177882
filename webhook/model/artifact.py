"""The trained model: one fitted Pipeline (PodFeatureEncoder -> AnchoredKNN) in one artifact file
that holds data only.

The webhook loads whatever file the trainer's CronJob writes to a shared volume, inside the pod
that answers every admission request and can read the whole cluster. A pickle (joblib) artifact
runs code when it is loaded, so a file written by anyone who can write that volume would run
there. This format cannot: it is a zip archive of

- `artifact.json`: format and version, the feature version, the model id, the model card
  (`metadata`), and for each Pipeline step its class name (from a fixed list of two), its
  constructor parameters and its fitted state, all plain JSON; `run_steps` the same for the
  optional run model (a Job's wall time, s: `build_run_pipeline`);
- `arrays/<step>/<name>.npy` (`arrays/run/<step>/...` for the run model): the fitted arrays, read
  by `numpy.lib.format.read_array` with `allow_pickle=False` (an object array, the one way a .npy
  can carry a pickle, is refused); stored uncompressed at 64-byte aligned offsets, so that the
  large ones are mapped read-only from the file instead of copied into memory.

Loading constructs the two known estimator classes from JSON values and sets their state through
their own `set_state`, which checks shapes; nothing named in the file is imported or called.
Older joblib artifacts are refused with a message that says to retrain them. The file's sha256
can be pinned (`--model-sha256`), and an artifact built for another feature version is refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import struct
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from sklearn.pipeline import Pipeline

from webhook.files import write_atomically
from webhook.model.features import FEATURE_VERSION, SUPPORTED_FEATURE_VERSIONS, PodFeatureEncoder
from webhook.model.knn import AnchoredKNN, NeighbourPrediction
from webhook.model.prediction import PodPrediction
from webhook.model.prior import PHYSICS_COLUMNS, PriorPredictor
from webhook.model.runs import Spread, capped_run_seconds
from webhook.model.schema import InferenceRequest

ARTIFACT_FORMAT = "energetiscope.model"
ARTIFACT_FORMAT_VERSION = 2
MANIFEST_NAME = "artifact.json"
ZIP_MAGIC = b"PK\x03\x04"
# The file extension the trainer suggests; any name works, the content decides.
ARTIFACT_SUFFIX = ".esmodel"
STEP_CLASSES: dict[str, type] = {"PodFeatureEncoder": PodFeatureEncoder, "AnchoredKNN": AnchoredKNN}
STEP_NAMES = ("features", "knn")
# Parameters added after artifacts were written without them, each with the value that reproduces
# what those artifacts predicted (a new fit writes every parameter): before 2026-11-29 local slopes
# extrapolated beyond the neighbours.
LEGACY_PARAMS: dict[str, dict[str, Any]] = {"AnchoredKNN": {"local_extrapolation": True}}
RUN_ARRAY_PREFIX = "arrays/run/"
LOCAL_HEADER_BYTES = 30  # a zip entry's local file header before its name and extra field
ARRAY_ALIGNMENT = 64
ALIGNMENT_EXTRA_ID = 0xD935  # the extra field zipalign pads with
MAPPED_ARRAY_MIN_BYTES = 1 << 20  # smaller arrays are read: no memory to save, and a mapping is a page at least


class ArtifactError(RuntimeError):
    """The model artifact cannot be used; the message says which file and why."""


def build_pipeline(n_neighbors: int = 5, target: str = "correction", **encoder_params: Any) -> Pipeline:
    """The unfitted model. The trainer fits it (pass `knn__groups=` to `fit` for grouped
    interval calibration); the webhook only ever loads it."""
    return Pipeline([
        ("features", PodFeatureEncoder(**encoder_params)),
        ("knn", AnchoredKNN(n_neighbors=n_neighbors, target=target, physics_columns=len(PHYSICS_COLUMNS))),
    ])


def build_run_pipeline(n_neighbors: int = 5, **encoder_params: Any) -> Pipeline:
    """The unfitted run model: the wall time, s, of one wave of a Job run's pods (a run is
    `webhook.model.runs.run_waves` waves), from the pod spec and the run fields (completions,
    parallelism, backoffLimit, activeDeadlineSeconds, completion mode), by KNN on log seconds
    anchored on the waves' typical length (`AnchoredKNN(anchor="constant")`)."""
    return Pipeline([
        ("features", PodFeatureEncoder(run_fields=True, **encoder_params)),
        ("knn", AnchoredKNN(n_neighbors=n_neighbors, target="correction", anchor="constant",
                            physics_columns=len(PHYSICS_COLUMNS), local_extrapolation=True)),
    ])


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class TrainedModel:
    pipeline: Pipeline
    model_id: str
    metadata: Mapping[str, Any] = field(default_factory=dict)
    prior: PriorPredictor = field(default_factory=PriorPredictor)
    sha256: str = ""
    run_pipeline: Pipeline | None = None  # a Job run's wall time (`build_run_pipeline`), when trained

    def predict_run_seconds(self, request: InferenceRequest) -> Spread | None:
        """A run's wall time, s (p10/p50/p90), from the run model; None without one
        (`webhook.model.runs` then falls back to activeDeadlineSeconds)."""
        if self.run_pipeline is None:
            return None
        detail = _detail(self.run_pipeline, [request])  # one wave's seconds
        return capped_run_seconds(request, Spread(float(detail.power_watts_p10[0]), float(detail.power_watts[0]),
                                           float(detail.power_watts_p90[0])))

    def predict(self, requests: Sequence[InferenceRequest]) -> list[PodPrediction]:
        if not requests:
            return []
        knn: AnchoredKNN = self.pipeline[-1]
        detail = widened_beyond_trust(_detail(self.pipeline, requests), requests, self.prior)
        predictions: list[PodPrediction] = []
        # Recall (`trainer.crossval.recall_params`) anchors on the embedded prior's own coefficients.
        anchor = "the calibrated prior" if knn.prior_.fit_coefficients else "the embedded prior"
        for i in range(len(requests)):
            reason = None
            if detail.prior_only[i]:
                reason = (f"nearest training pod is {float(detail.nearest_distance[i]):.2f} away, beyond the model's "
                          f"trust radius {knn.trust_radius_:.2f}: {anchor} answers")
            predictions.append(PodPrediction(
                power_watts=float(detail.power_watts[i]),
                power_watts_p10=float(detail.power_watts_p10[i]),
                power_watts_p90=float(detail.power_watts_p90[i]),
                model_id=self.model_id,
                basis="prior" if reason else "model",
                fallback_reason=reason,
            ))
        return predictions


def widened_beyond_trust(detail: NeighbourPrediction, requests: Sequence[InferenceRequest],
                         prior: PriorPredictor) -> NeighbourPrediction:
    """`detail` with the p10/p90 of each row the calibrated prior answers alone (beyond the trust
    radius) at least as wide, relative to the point, as `prior`'s own range for that request. The
    model's offsets were calibrated where it has neighbours: a CPU-only model gave a GPU pod it had
    never seen +-10%, where the embedded prior's own range for it is 57-273 W. `TrainedModel.predict`
    and the trainer's cross-validation (`trainer.crossval.served_out_of_fold`) both apply it, the
    latter with the embedded prior's defaults: a server started with other `--prior-*` settings
    widens by its own prior's range."""
    rows = np.flatnonzero(detail.prior_only)
    if rows.size == 0:
        return detail
    low, high = np.array(detail.power_watts_p10, dtype=np.float64), np.array(detail.power_watts_p90, dtype=np.float64)
    for i in rows:
        own = prior.predict_one(requests[i])
        point = float(detail.power_watts[i])
        if not (math.isfinite(own.power_watts) and own.power_watts > 0):  # a pod asking for nothing: 0 W
            continue
        low[i] = min(low[i], point * own.power_watts_p10 / own.power_watts)
        high[i] = max(high[i], point * own.power_watts_p90 / own.power_watts)
    return replace(detail, power_watts_p10=low, power_watts_p90=high)


def _detail(pipeline: Pipeline, requests: Sequence[InferenceRequest]) -> NeighbourPrediction:
    """The fitted steps called directly: slicing a Pipeline (`pipeline[:-1]`) builds a new one
    and deep-copies its parameters, about 0.2 ms of a 1.1 ms cache miss (bench.mutate_stages)."""
    encoder, knn = pipeline.steps[0][1], pipeline.steps[-1][1]
    return knn.predict_detail(encoder.transform(requests))


def _array_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=False)  # C or Fortran order, as the estimator keeps it
    return buffer.getvalue()


def _steps_and_arrays(pipeline: Pipeline, array_prefix: str) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    if [name for name, _ in pipeline.steps] != list(STEP_NAMES):
        raise ValueError(f"the pipeline's steps must be {STEP_NAMES}")
    steps: list[dict[str, Any]] = []
    arrays: dict[str, np.ndarray] = {}
    for name, estimator in pipeline.steps:
        state, step_arrays = estimator.to_state()
        params = {k: v for k, v in estimator.get_params(deep=False).items() if k != "prior"}
        steps.append({"name": name, "class": type(estimator).__name__, "params": params, "state": state,
                      "arrays": sorted(step_arrays)})
        arrays.update({f"{array_prefix}{name}/{key}.npy": value for key, value in step_arrays.items()})
    return steps, arrays


def artifact_bytes(pipeline: Pipeline, model_id: str, metadata: Mapping[str, Any] | None = None,
                   run_pipeline: Pipeline | None = None) -> bytes:
    """The artifact file's content (a zip archive: see the module docstring)."""
    steps, arrays = _steps_and_arrays(pipeline, "arrays/")
    manifest = {
        "format": ARTIFACT_FORMAT,
        "format_version": ARTIFACT_FORMAT_VERSION,
        # The encoder's own: a pipeline loaded from a version 2 artifact is written back as one.
        "feature_version": int(getattr(pipeline[0], "feature_version_", FEATURE_VERSION)),
        "model_id": model_id,
        "metadata": dict(metadata or {}),
        "steps": steps,
    }
    if run_pipeline is not None:
        manifest["run_steps"], run_arrays = _steps_and_arrays(run_pipeline, RUN_ARRAY_PREFIX)
        arrays.update(run_arrays)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr(MANIFEST_NAME, json.dumps(manifest, indent=1, allow_nan=False, default=_json_default))
        for entry, array in arrays.items():
            archive.writestr(_aligned_entry(entry, buffer.tell()), _array_bytes(array))
    return buffer.getvalue()


def _aligned_entry(name: str, header_offset: int) -> zipfile.ZipInfo:
    """A stored entry whose data starts on an `ARRAY_ALIGNMENT` boundary of the file, padded by an
    extra field (zipalign's way), so that a loader can map its array in place (`_mapped_array`):
    a .npy pads its own header to 64 bytes, so the array's first element is aligned too."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    padding = -(header_offset + LOCAL_HEADER_BYTES + len(name.encode())) % ARRAY_ALIGNMENT
    if padding < 4:  # an extra field is at least its 4-byte id and length
        padding += ARRAY_ALIGNMENT
    info.extra = struct.pack("<HH", ALIGNMENT_EXTRA_ID, padding - 4) + bytes(padding - 4)
    return info


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (tuple, set)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def save_model(path: Path, pipeline: Pipeline, model_id: str, metadata: Mapping[str, Any] | None = None,
               run_pipeline: Pipeline | None = None) -> str:
    """Write the artifact atomically; return its sha256."""
    content = artifact_bytes(pipeline, model_id, metadata, run_pipeline)
    write_atomically(path, lambda temp: temp.write_bytes(content))
    return hashlib.sha256(content).hexdigest()


def _refuse(path: Path, why: str) -> ArtifactError:
    return ArtifactError(f"model artifact {path} {why}")


def _read_pipeline(path: Path, archive: zipfile.ZipFile, steps: Any, array_prefix: str) -> Pipeline:
    if not isinstance(steps, list) or [s.get("name") if isinstance(s, Mapping) else None for s in steps] != list(STEP_NAMES):
        raise _refuse(path, f"does not hold the steps {', '.join(STEP_NAMES)}")
    built: list[tuple[str, Any]] = []
    for step in steps:
        cls = STEP_CLASSES.get(step.get("class"))  # a fixed list: nothing named in the file is imported
        if cls is None or STEP_NAMES.index(step["name"]) != list(STEP_CLASSES).index(step.get("class")):
            raise _refuse(path, f"names step {step['name']!r} class {step.get('class')!r}, which this server does not build")
        arrays: dict[str, np.ndarray] = {}
        for key in step.get("arrays", []):
            info = archive.getinfo(f"{array_prefix}{step['name']}/{key}.npy")
            mapped = _mapped_array(path, info)
            if mapped is not None:
                arrays[str(key)] = mapped
                continue
            with archive.open(info) as member:
                arrays[str(key)] = np.lib.format.read_array(io.BytesIO(member.read()), allow_pickle=False)
        estimator = cls(**{**LEGACY_PARAMS.get(cls.__name__, {}), **dict(step.get("params") or {})})
        estimator.set_state(step.get("state") or {}, arrays)
        built.append((step["name"], estimator))
    return Pipeline(built)


def _mapped_array(path: Path, info: zipfile.ZipInfo) -> np.ndarray | None:
    """A large stored member's array, mapped read-only from the file instead of read: no copy in
    memory, and its pages are the page cache's, shared and reclaimable. Reading a 1M-row model's
    720 MB of training rows held the bytes, the array read from them and two layout copies at
    once (serving peak RSS 1,997 MiB, load 5.4 s: bench/results/predictor_scale_1m_ivf.json).
    None (read it instead) for a small, compressed or unaligned member, or one whose .npy header
    does not describe exactly the member's bytes. A reload replaces the file by rename
    (`webhook.files.write_atomically`), so a mapped model keeps reading the file it loaded."""
    if info.compress_type != zipfile.ZIP_STORED or info.file_size < MAPPED_ARRAY_MIN_BYTES:
        return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(LOCAL_HEADER_BYTES)
        if len(header) != LOCAL_HEADER_BYTES or header[:4] != ZIP_MAGIC:
            return None
        name_length, extra_length = struct.unpack("<HH", header[26:30])
        start = info.header_offset + LOCAL_HEADER_BYTES + name_length + extra_length
        f.seek(start)
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            return None
        data_offset = f.tell()
    if dtype.hasobject:
        raise ValueError(f"{info.filename} is an object array, which could carry a pickle")
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if data_offset % ARRAY_ALIGNMENT or data_offset - start + size != info.file_size or size == 0:
        return None
    return np.memmap(path, dtype=dtype, mode="r", offset=data_offset, shape=tuple(shape),
                     order="F" if fortran_order else "C")


def load_model(path: Path, prior: PriorPredictor | None = None, expected_sha256: str | None = None) -> TrainedModel:
    if not path.is_file():
        raise _refuse(path, "does not exist or is not a file")
    digest = file_sha256(path)
    if expected_sha256 and digest != expected_sha256.lower():
        raise _refuse(path, f"has sha256 {digest}, expected {expected_sha256}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != ZIP_MAGIC:
        if magic[:1] == b"\x80" or magic[:1] == b"\x78":  # a pickle protocol byte, or zlib (joblib's compression)
            raise _refuse(path, "is a pickle (joblib) artifact from an earlier EnergetiScope: pickles run code when "
                                "loaded, so they are refused; retrain it with `energetiscope train fit`")
        raise _refuse(path, f"is not an EnergetiScope model (format {ARTIFACT_FORMAT!r}, a zip archive)")
    try:
        with zipfile.ZipFile(path) as archive:
            manifest = json.loads(archive.read(MANIFEST_NAME))
            if not isinstance(manifest, dict) or manifest.get("format") != ARTIFACT_FORMAT:
                raise _refuse(path, f"is not an EnergetiScope model (format {ARTIFACT_FORMAT!r})")
            if manifest.get("format_version") != ARTIFACT_FORMAT_VERSION:
                raise _refuse(path, f"has format version {manifest.get('format_version')}, this server reads "
                                    f"{ARTIFACT_FORMAT_VERSION}: retrain it")
            if manifest.get("feature_version") not in SUPPORTED_FEATURE_VERSIONS:
                raise _refuse(path, f"was built for feature version {manifest.get('feature_version')}, this server "
                                    f"computes versions {', '.join(map(str, SUPPORTED_FEATURE_VERSIONS))}: retrain it")
            pipeline = _read_pipeline(path, archive, manifest.get("steps"), "arrays/")
            run_pipeline = None
            if manifest.get("run_steps") is not None:
                run_pipeline = _read_pipeline(path, archive, manifest["run_steps"], RUN_ARRAY_PREFIX)
    except ArtifactError:
        raise
    except Exception as exc:  # truncated, bad zip, bad JSON, object arrays, wrong shapes: not a usable artifact
        raise _refuse(path, f"cannot be read: {type(exc).__name__}: {exc}") from exc
    return TrainedModel(
        pipeline=pipeline,
        model_id=str(manifest.get("model_id") or digest[:12]),
        metadata=manifest.get("metadata") or {},
        prior=prior or PriorPredictor(),
        sha256=digest,
        run_pipeline=run_pipeline,
    )
