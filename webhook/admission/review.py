"""The mutating admission handler: an AdmissionReview request in, an AdmissionReview out.

Fails open: whatever is wrong with the object, the apiserver gets a valid response that
allows it, with a warning the user sees in kubectl. Only a body that is not an
AdmissionReview at all is refused (HTTP 400), because then there is no uid to answer.
"""

from __future__ import annotations

import base64
import functools
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Any, Literal, Union

import jsonpatch
import msgspec

from webhook.admission import annotations
from webhook.model.extract import ExtractionError, is_workload
from webhook.model.kinds import has_controller
from webhook.admission.reading import ObjectReader, read_object
from webhook.model.schema import InferenceRequest
from webhook.model.service import PredictionService, WorkloadPrediction

log = logging.getLogger(__name__)

ADMISSION_API_VERSION = "admission.k8s.io/v1"
Outcome = Literal["patched", "unchanged", "skipped", "failed_open", "allowed", "warned", "audited", "denied"]


class NotAnAdmissionReview(ValueError):
    """The body cannot be answered as an AdmissionReview; the message says why."""


@dataclass(frozen=True)
class MutationSettings:
    # Pods owned by a controller inherit their owner's prediction; annotating every pod of
    # a 500-replica Deployment would only repeat it 500 times.
    annotate_owned_pods: bool = False


@dataclass(frozen=True)
class AdmissionResult:
    review: dict[str, Any]
    outcome: Outcome
    warnings: list[str] = field(default_factory=list)
    basis: str | None = None  # what produced the prediction, when one was made


def parse_review(body: Any) -> Mapping[str, Any]:
    """Validate the envelope and return its ``request`` stanza."""
    if not isinstance(body, Mapping):
        raise NotAnAdmissionReview(f"expected a JSON object, got {type(body).__name__}")
    if body.get("kind") != "AdmissionReview":
        raise NotAnAdmissionReview(f"kind: expected 'AdmissionReview', got {body.get('kind')!r}")
    if body.get("apiVersion") != ADMISSION_API_VERSION:
        raise NotAnAdmissionReview(
            f"apiVersion: {body.get('apiVersion')!r} is not supported; set admissionReviewVersions: [v1]"
        )
    request = body.get("request")
    if not isinstance(request, Mapping):
        raise NotAnAdmissionReview("request: expected an object")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise NotAnAdmissionReview("request.uid: expected a non-empty string")
    return request


def review_response(
    uid: str,
    *,
    allowed: bool = True,
    patch: list[dict[str, Any]] | None = None,
    warnings: list[str] | None = None,
    denial: str | None = None,
    audit_annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    response: dict[str, Any] = {"uid": uid, "allowed": allowed}
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(msgspec.json.encode(patch)).decode()
    if denial is not None:
        response["status"] = {"code": 403, "reason": "Forbidden", "message": denial}
    if warnings:
        response["warnings"] = warnings
    if audit_annotations:
        response["auditAnnotations"] = dict(audit_annotations)
    return {"apiVersion": ADMISSION_API_VERSION, "kind": "AdmissionReview", "response": response}


def api_version_and_kind(gvk: Any) -> tuple[str | None, str | None]:
    if not isinstance(gvk, Mapping):
        return None, None
    group, version, kind = gvk.get("group"), gvk.get("version"), gvk.get("kind")
    if not isinstance(version, str) or not isinstance(kind, str):
        return None, None
    return (f"{group}/{version}" if group else version), kind


class PendingReview(ABC):
    """A review that needs a prediction before it can be answered.

    Everything else about a review is cheap and bounded by the body (which the event loop has
    already parsed), so it runs on the loop; the prediction is answered on the loop too when the
    cache holds it, and only running the model goes to a worker thread, under the time budget.
    """

    uid: str
    request: InferenceRequest
    spec_hash: str

    @abstractmethod
    def complete(self, prediction: WorkloadPrediction) -> AdmissionResult: ...

    @abstractmethod
    def fail(self, error: Exception) -> AdmissionResult:
        """The fail-open answer when the prediction raised."""

    def predict_and_complete(self, service: PredictionService) -> AdmissionResult:
        try:
            prediction = service.predict(self.request, self.spec_hash)
        except Exception as exc:  # the cluster must not stop deploying because a prediction broke
            return self.fail(exc)
        return self.complete(prediction)


Plan = Union[AdmissionResult, PendingReview]


def resolve(plan: Plan, service: PredictionService) -> AdmissionResult:
    """Answer a planned review in the calling thread, running the model if it must."""
    return plan if isinstance(plan, AdmissionResult) else plan.predict_and_complete(service)


def _allow(uid: str, outcome: Outcome, warning: str | None = None) -> AdmissionResult:
    warnings = [warning] if warning else []
    return AdmissionResult(review_response(uid, warnings=warnings), outcome, warnings)


@dataclass(frozen=True)
class PendingMutation(PendingReview):
    uid: str
    kind: str
    metadata: Mapping[str, Any]
    request: InferenceRequest
    spec_hash: str

    def fail(self, error: Exception) -> AdmissionResult:
        log.error("prediction failed for %s %s/%s", self.kind, self.metadata.get("namespace"),
                  self.metadata.get("name"), exc_info=error)
        return _allow(self.uid, "failed_open",
                      f"energetiscope: {self.kind} not annotated: prediction failed ({type(error).__name__})")

    def complete(self, prediction: WorkloadPrediction) -> AdmissionResult:
        patch = annotations_patch(self.metadata, annotations.render(prediction))
        basis = prediction.pod.basis
        if not patch:
            return AdmissionResult(review_response(self.uid), "unchanged", basis=basis)
        return AdmissionResult(review_response(self.uid, patch=list(patch)), "patched", basis=basis)


Operation = dict[str, Any]


def annotations_patch(metadata: Mapping[str, Any], wanted: Mapping[str, str]) -> tuple[Operation, ...]:
    """The JSON patch from the object to its copy with ``wanted`` merged into its annotations.

    jsonpatch diffs the annotations alone, in their place so the paths are the object's own:
    nothing else changes, and diffing the whole object costs ~100x more. Annotations other than
    ``wanted``'s keys are the same on both sides and cannot appear in the diff, so diffing just
    the object's values at those keys gives the same patch. That makes the patch a function of
    a few strings, memoised because a spec's reviews repeat (the diff takes ~100 us).
    """
    key = patch_key(metadata, wanted)
    try:
        return _projected_patch(*key)
    except TypeError:  # a malformed, unhashable value at one of our keys: diff it unmemoised
        return _projected_patch.__wrapped__(*key)


AnnotationsState = Literal["absent", "null", "object"]
PatchKey = tuple[AnnotationsState, tuple[tuple[str, Any], ...], tuple[tuple[str, str], ...]]


def patch_key(metadata: Mapping[str, Any], wanted: Mapping[str, str]) -> PatchKey:
    """All the patch depends on: whether annotations exist, our keys' old values, the new ones."""
    if "annotations" not in metadata:
        state: AnnotationsState = "absent"
    elif metadata["annotations"] is None:
        state = "null"
    else:
        state = "object"
    current = metadata.get("annotations") or {}
    return state, tuple((key, current[key]) for key in wanted if key in current), tuple(wanted.items())


@functools.lru_cache(maxsize=4096)
def _projected_patch(
    state: AnnotationsState, ours: tuple[tuple[str, Any], ...], wanted: tuple[tuple[str, str], ...]
) -> tuple[Operation, ...]:
    if state == "absent":
        before: dict[str, Any] = {"metadata": {}}
    else:
        before = {"metadata": {"annotations": None if state == "null" else dict(ours)}}
    after = {"metadata": {"annotations": {**dict(ours), **dict(wanted)}}}
    return tuple(jsonpatch.make_patch(before, after).patch)


def plan_mutation(request: Mapping[str, Any], settings: MutationSettings, reader: ObjectReader | None = None) -> Plan:
    uid: str = request["uid"]
    # DELETE and CONNECT carry no object to annotate (a patch on DELETE fails the request);
    # subresources (status, scale) are not the workload object itself.
    if request.get("operation") not in ("CREATE", "UPDATE") or request.get("subResource"):
        return _allow(uid, "skipped")
    api_version, kind = api_version_and_kind(request.get("kind"))
    if not is_workload(kind, api_version):
        return _allow(uid, "skipped")

    obj = request.get("object")
    if not isinstance(obj, Mapping):
        return _allow(uid, "failed_open", f"energetiscope: {kind} not annotated: request.object is missing or not an object")
    metadata = obj.get("metadata")
    if not isinstance(metadata, Mapping):
        # The apiserver always sends metadata; patching in a whole new one would overwrite more
        # than our annotations.
        return _allow(uid, "failed_open", f"energetiscope: {kind} not annotated: metadata: expected an object")
    labels = metadata.get("labels")
    if isinstance(labels, Mapping) and annotations.is_skipped(labels):
        return _allow(uid, "skipped")
    if kind == "Pod" and not settings.annotate_owned_pods and has_controller(metadata):
        return _allow(uid, "skipped")

    typed = {"apiVersion": api_version, "kind": kind, **obj} if "kind" not in obj else obj
    try:
        inference_request, hash_ = read_object(typed, reader)
    except ExtractionError as exc:
        return _allow(uid, "failed_open", f"energetiscope: {kind} not annotated: {exc}")
    except Exception as exc:
        log.exception("extraction failed for %s %s/%s", kind, metadata.get("namespace"), metadata.get("name"))
        return _allow(uid, "failed_open", f"energetiscope: {kind} not annotated: extraction failed ({type(exc).__name__})")
    current = metadata.get("annotations")
    if current is not None and not isinstance(current, Mapping):
        return _allow(uid, "failed_open", f"energetiscope: {kind} not annotated: metadata.annotations: expected an object")
    return PendingMutation(uid, str(kind), metadata, inference_request, hash_)


def mutate(request: Mapping[str, Any], service: PredictionService, settings: MutationSettings) -> AdmissionResult:
    return resolve(plan_mutation(request, settings), service)
