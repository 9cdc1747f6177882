"""The mutating admission handler: write the workload's predicted power into its annotations.

Fails open: whatever is wrong with the object, it is allowed with a warning naming the field
(`energetiscope: Deployment not annotated: spec.template.spec.containers[0]...`), which the user
sees in kubectl. DELETE and CONNECT, subresources, other kinds, objects labelled
``energetiscope.io/skip=true`` and (by default) Pods a controller owns are allowed untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from webhook.admission import annotations
from webhook.admission.patch import annotations_patch
from webhook.admission.pipeline import review_now
from webhook.admission.reading import ObjectReader, read_object
from webhook.admission.review import (
    AdmissionRequest,
    AdmissionResponse,
    Answer,
    PendingReview,
    allowed,
    failed_open,
    fit_warning,
    patched,
)
from webhook.model.carbon import CarbonSettings, GridIntensity
from webhook.model.extract import ExtractionError
from webhook.model.kinds import has_controller, workload_kind
from webhook.model.schema import InferenceRequest
from webhook.model.service import PredictionService, WorkloadPrediction

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MutationSettings:
    # Pods owned by a controller inherit their owner's prediction; annotating every pod of
    # a 500-replica Deployment would only repeat it 500 times.
    annotate_owned_pods: bool = False
    # The grid for carbon annotations (--carbon-region, --grid-intensity); none configured means
    # carbon only for pods with a known topology.kubernetes.io/region node selector.
    carbon: CarbonSettings = CarbonSettings()


@dataclass(frozen=True)
class PendingMutation(PendingReview):
    uid: str
    metadata: Mapping[str, Any]
    request: InferenceRequest
    spec_hash: str
    grid: GridIntensity | None = None
    carbon: CarbonSettings = CarbonSettings()

    def complete(self, prediction: WorkloadPrediction) -> AdmissionResponse:
        patch = annotations_patch(self.metadata, annotations.wanted(prediction, self.grid, self.carbon))
        # An invalid schedule or time zone costs only the per-day keys, and the user is told
        # which field; the apiserver's own validation decides whether the object is admitted.
        problem = prediction.runs.problem
        warnings = [fit_warning(f"energetiscope: no runs-per-day: {problem}")] if problem else []
        return patched(self.uid, patch, basis=prediction.pod.basis, warnings=warnings)


class MutatingHandler:
    """``/mutate``: a decoded request in, the annotations patch (or a reason not to) out."""

    not_done = "not annotated"

    def __init__(self, settings: MutationSettings | None = None, reader: ObjectReader | None = None) -> None:
        self.settings = settings or MutationSettings()
        self.reader = reader  # objects already read, or None to read every one afresh

    def failure(self, request: AdmissionRequest, step: str, error: Exception) -> str:
        return f"energetiscope: {request.kind} not annotated: {step} failed ({type(error).__name__})"

    def handle(self, request: AdmissionRequest) -> Answer:
        uid = request.uid
        # DELETE and CONNECT carry no object to annotate (a patch on DELETE fails the request);
        # subresources (status, scale) are not the workload object itself.
        if request.operation not in ("CREATE", "UPDATE") or request.sub_resource:
            return allowed(uid, "skipped")
        kind = request.kind
        if workload_kind(kind, request.api_version) is None:
            return allowed(uid, "skipped")

        obj = request.object
        if not isinstance(obj, Mapping):
            return failed_open(uid, f"energetiscope: {kind} not annotated: request.object is missing or not an object")
        metadata = obj.get("metadata")
        if not isinstance(metadata, Mapping):
            # The apiserver always sends metadata; patching in a whole new one would overwrite more
            # than our annotations.
            return failed_open(uid, f"energetiscope: {kind} not annotated: metadata: expected an object")
        labels = metadata.get("labels")
        if isinstance(labels, Mapping) and annotations.is_skipped(labels):
            return allowed(uid, "skipped")
        if kind == "Pod" and not self.settings.annotate_owned_pods and has_controller(metadata):
            return allowed(uid, "skipped")

        typed = {"apiVersion": request.api_version, "kind": kind, **obj} if "kind" not in obj else obj
        try:
            inference_request, hash_ = read_object(typed, self.reader)
        except ExtractionError as exc:
            return failed_open(uid, f"energetiscope: {kind} not annotated: {exc}")
        except Exception as exc:  # a bug in extraction: fail open, saying which step broke
            log.exception("extraction failed for %s %s/%s", kind, metadata.get("namespace"), metadata.get("name"))
            return failed_open(uid, self.failure(request, "extraction", exc))
        current = metadata.get("annotations")
        if current is not None and not isinstance(current, Mapping):
            return failed_open(uid, f"energetiscope: {kind} not annotated: metadata.annotations: expected an object")
        carbon = self.settings.carbon
        return PendingMutation(uid, metadata, inference_request, hash_, carbon.for_object(typed), carbon)


def mutate(request: AdmissionRequest, service: PredictionService, settings: MutationSettings | None = None,
           reader: ObjectReader | None = None) -> AdmissionResponse:
    """One review answered in the calling thread (the server answers through ``ReviewPipeline``)."""
    return review_now(MutatingHandler(settings, reader), request, service)
