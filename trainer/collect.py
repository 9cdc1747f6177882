"""The trainer's `collect` step: workload specs from the Kubernetes API, as InferenceRequests.

Every Pod, ReplicationController, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job and
CronJob is listed (and optionally watched for a while, to catch short-lived Jobs and Pods) and
turned into an InferenceRequest by `webhook.model.extract.to_inference_request`, the function the
webhook itself uses, so training sees exactly what serving sees. The output is NDJSON, one
`InferenceRequest.model_dump(mode="json")` per line.

Objects whose controller ownerReference names another object (a Deployment's ReplicaSets and
Pods, a CronJob's Jobs, a DaemonSet's Pods, a static pod's Node) are kept, marked with the
annotation `energetiscope.io/controller: Kind/name`: the webhook annotates the owner, and the
dataset step joins a pod's measurements to its owner's spec only. The webhook drops every
`energetiscope.io/` annotation from the objects it reads, so the mark can only come from here;
annotations are outside the spec hash and the features, so it changes neither.

Objects that cannot be read are reported (namespace, kind, name, field, problem) and counted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from webhook.files import write_text_atomically
from trainer.inputs import InputFileError
from trainer.kube import COLLECTED_KINDS, KubeSettings, WorkloadReader, api_client
from webhook.model.extract import ExtractionError, to_inference_request
from webhook.model import kinds as workload_kinds
from webhook.model.schema import ANNOTATION_PREFIX, InferenceRequest, spec_hash

CONTROLLER_ANNOTATION = f"{ANNOTATION_PREFIX}controller"


@dataclass(frozen=True)
class ExtractionFailure:
    """An object that could not become an InferenceRequest, and why."""

    namespace: str
    kind: str
    name: str
    field: str
    problem: str

    def describe(self) -> str:
        return f"{self.namespace}/{self.kind}/{self.name}: {self.field}: {self.problem}"


@dataclass
class CollectReport:
    requests: list[InferenceRequest]
    failures: list[ExtractionFailure]
    objects_per_kind: dict[str, int] = field(default_factory=dict)
    watch_events: int = 0

    @property
    def controller_owned(self) -> int:
        return sum(1 for r in self.requests if controller_of(r) is not None)

    def summary(self) -> dict[str, Any]:
        return {
            "requests": len(self.requests),
            "controller_owned": self.controller_owned,
            "failures": len(self.failures),
            "objects_per_kind": dict(self.objects_per_kind),
            "watch_events": self.watch_events,
            "failed_objects": [asdict(f) for f in self.failures],
        }


def controller_of(request: InferenceRequest) -> tuple[str, str] | None:
    """(kind, name) of the controller that owns the object this request was collected from."""
    value = request.annotations.get(CONTROLLER_ANNOTATION)
    if not value or "/" not in value:
        return None
    kind, name = value.split("/", 1)
    return kind, name


def request_of(manifest: Mapping[str, Any]) -> InferenceRequest:
    """The object's InferenceRequest, marked with its controller (raises ExtractionError)."""
    request = to_inference_request(manifest)
    owner = workload_kinds.controller_of(manifest.get("metadata"))
    if owner is None:
        return request
    annotations = {**request.annotations, CONTROLLER_ANNOTATION: f"{owner.kind}/{owner.name}"}
    return request.model_copy(update={"annotations": annotations})


def _identity(manifest: Mapping[str, Any]) -> tuple[str, str, str]:
    metadata = manifest.get("metadata") if isinstance(manifest.get("metadata"), Mapping) else {}
    return (
        str(metadata.get("namespace") or "default"),
        str(manifest.get("kind") or "?"),
        str(metadata.get("name") or metadata.get("generateName") or "?"),
    )


def extract_requests(manifests: Iterable[Mapping[str, Any]]) -> tuple[list[InferenceRequest], list[ExtractionFailure]]:
    """Requests for the objects, without duplicates (an object seen twice with the same spec),
    sorted by namespace, kind and name; failures for the objects that cannot be read."""
    requests: dict[tuple[str, str, str, str, str], InferenceRequest] = {}
    failures: dict[tuple[str, ...], ExtractionFailure] = {}
    for manifest in manifests:
        try:
            request = request_of(manifest)
        except ExtractionError as error:
            namespace, kind, name = _identity(manifest)
            failure = ExtractionFailure(namespace, kind, name, error.field, error.problem)
            failures[(namespace, kind, name, error.field, error.problem)] = failure
            continue
        key = (
            request.namespace,
            request.workload_kind,
            request.workload_name,
            spec_hash(request),
            request.annotations.get(CONTROLLER_ANNOTATION, ""),
        )
        requests.setdefault(key, request)
    return [requests[k] for k in sorted(requests)], [failures[k] for k in sorted(failures)]


def collect_requests(
    reader: WorkloadReader,
    kinds: Sequence[str] = COLLECTED_KINDS,
    namespaces: Sequence[str] | None = None,
    watch_seconds: float = 0.0,
    progress: bool = False,
) -> CollectReport:
    """List every object of `kinds` (in `namespaces`, or all), then, when `watch_seconds` > 0,
    watch them that long and keep every version seen, deleted objects included (a Job that came
    and went during the watch is exactly what the labels will have measured)."""
    unknown = [k for k in kinds if k not in COLLECTED_KINDS]
    if unknown:
        raise ValueError(f"cannot collect kinds {unknown}; known: {', '.join(COLLECTED_KINDS)}")
    scopes: list[str | None] = list(namespaces) if namespaces else [None]
    targets = [(kind, namespace) for kind in kinds for namespace in scopes]
    manifests: list[dict[str, Any]] = []
    versions: dict[tuple[str, str | None], str] = {}
    objects_per_kind: dict[str, int] = {kind: 0 for kind in kinds}
    for kind, namespace in tqdm(targets, desc="list", unit="kind", disable=not progress):
        listed = reader.list_kind(kind, namespace)
        manifests.extend(listed.items)
        objects_per_kind[kind] += len(listed.items)
        versions[(kind, namespace)] = listed.resource_version

    watch_events = 0
    if watch_seconds > 0:

        def watch(target: tuple[str, str | None]) -> list[dict[str, Any]]:
            kind, namespace = target
            return [obj for _, obj in reader.watch_kind(kind, versions[target], watch_seconds, namespace)]

        # One blocking watch per kind and namespace, side by side for the same duration.
        with ThreadPoolExecutor(max_workers=len(targets)) as pool:
            for seen in tqdm(pool.map(watch, targets), total=len(targets), desc="watch", unit="kind",
                             disable=not progress):
                watch_events += len(seen)
                manifests.extend(seen)

    requests, failures = extract_requests(manifests)
    return CollectReport(requests=requests, failures=failures, objects_per_kind=objects_per_kind,
                         watch_events=watch_events)


# -- NDJSON ----------------------------------------------------------------------------------


def write_requests(requests: Iterable[InferenceRequest], path: str | os.PathLike[str]) -> Path:
    """One `model_dump(mode="json")` per line, written atomically."""
    lines = [json.dumps(r.model_dump(mode="json"), sort_keys=True, separators=(",", ":")) for r in requests]
    return write_text_atomically(path, "".join(line + "\n" for line in lines))


def read_requests(path: str | os.PathLike[str]) -> list[InferenceRequest]:
    """InferenceRequests from NDJSON (ours or the prototype's); a bad line raises naming it."""
    requests: list[InferenceRequest] = []
    try:
        # Bytes, decoded line by line: a corrupt byte is then reported with its line number.
        with open(path, "rb") as lines:
            for number, raw in enumerate(lines, start=1):
                if not raw.strip():
                    continue
                try:
                    requests.append(InferenceRequest.model_validate_json(raw.decode("utf-8")))
                except ValueError as exc:  # bad UTF-8, bad JSON, a truncated last line, a wrong field
                    problem = [part.strip() for part in str(exc).strip().splitlines()[:3]]
                    # pydantic's last line is a link to its docs, not about this file.
                    problem = [part for part in problem if part and not part.startswith("For further information")]
                    raise InputFileError(
                        path, "NDJSON InferenceRequests (train collect's output)", f"line {number}: {' '.join(problem)}"
                    ) from None
    except OSError as exc:
        raise InputFileError(path, "NDJSON InferenceRequests (train collect's output)", str(exc)) from None
    return requests


def run_collect(
    settings: KubeSettings,
    out: str | os.PathLike[str],
    kinds: Sequence[str] = COLLECTED_KINDS,
    namespaces: Sequence[str] | None = None,
    watch_seconds: float = 0.0,
    progress: bool = True,
) -> CollectReport:
    """`energetiscope train collect`: list (and watch), extract, write NDJSON."""
    with api_client(settings) as api:
        reader = WorkloadReader(api, settings.request_timeout_seconds)
        report = collect_requests(reader, kinds, namespaces, watch_seconds, progress)
    write_requests(report.requests, out)
    return report
