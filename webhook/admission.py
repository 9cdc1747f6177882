"""The mutating admission handler: an AdmissionReview request in, an AdmissionReview out.

Fails open: whatever is wrong with the object, the apiserver gets a valid response that
allows it, with a warning the user sees in kubectl. Only a body that is not an
AdmissionReview at all is refused (HTTP 400), because then there is no uid to answer.
"""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

import jsonpatch

from . import annotations
from .extract import ExtractionError, has_controller, is_workload, to_inference_request
from .service import PredictionService

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
        response["patch"] = base64.b64encode(json.dumps(patch, separators=(",", ":")).encode()).decode()
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


def mutate(request: Mapping[str, Any], service: PredictionService, settings: MutationSettings) -> AdmissionResult:
    uid: str = request["uid"]

    def allow(outcome: Outcome, warning: str | None = None) -> AdmissionResult:
        warnings = [warning] if warning else []
        return AdmissionResult(review_response(uid, warnings=warnings), outcome, warnings)

    # DELETE and CONNECT carry no object to annotate (a patch on DELETE fails the request);
    # subresources (status, scale) are not the workload object itself.
    if request.get("operation") not in ("CREATE", "UPDATE") or request.get("subResource"):
        return allow("skipped")
    api_version, kind = api_version_and_kind(request.get("kind"))
    if not is_workload(kind, api_version):
        return allow("skipped")

    obj = request.get("object")
    if not isinstance(obj, Mapping):
        return allow("failed_open", f"energetiscope: {kind} not annotated: request.object is missing or not an object")
    metadata = obj.get("metadata")
    if not isinstance(metadata, Mapping):
        # The apiserver always sends metadata; patching in a whole new one would overwrite more
        # than our annotations.
        return allow("failed_open", f"energetiscope: {kind} not annotated: metadata: expected an object")
    labels = metadata.get("labels")
    if isinstance(labels, Mapping) and annotations.is_skipped(labels):
        return allow("skipped")
    if kind == "Pod" and not settings.annotate_owned_pods and has_controller(metadata):
        return allow("skipped")

    typed = {"apiVersion": api_version, "kind": kind, **obj} if "kind" not in obj else obj
    try:
        inference_request = to_inference_request(typed)
        prediction = service.predict(inference_request)
        wanted = annotations.render(prediction)
    except ExtractionError as exc:
        return allow("failed_open", f"energetiscope: {kind} not annotated: {exc}")
    except Exception as exc:  # the cluster must not stop deploying because a prediction broke
        log.exception("prediction failed for %s %s/%s", kind, metadata.get("namespace"), metadata.get("name"))
        return allow("failed_open", f"energetiscope: {kind} not annotated: prediction failed ({type(exc).__name__})")

    current = metadata.get("annotations")
    if current is not None and not isinstance(current, Mapping):
        return allow("failed_open", f"energetiscope: {kind} not annotated: metadata.annotations: expected an object")
    # Diff only the part of the object that changes: the original and mutated annotations,
    # placed where they sit in the object so the paths are the object's own. Diffing the whole
    # object costs ~100x more and could only ever find the same operations.
    before = {"metadata": {"annotations": current}} if "annotations" in metadata else {"metadata": {}}
    after = {"metadata": {"annotations": {**(current or {}), **wanted}}}
    patch = jsonpatch.make_patch(before, after).patch
    basis = prediction.pod.basis
    if not patch:
        return AdmissionResult(review_response(uid), "unchanged", basis=basis)
    return AdmissionResult(review_response(uid, patch=patch), "patched", basis=basis)
