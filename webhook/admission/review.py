"""The admission protocol: an AdmissionReview decoded into a request, and the responses a handler answers with.

Shaped like controller-runtime's admission package. :func:`parse_review` checks the envelope and
decodes its ``request`` stanza into an :class:`AdmissionRequest`; a handler (``mutate``,
``validate``) returns an :class:`AdmissionResponse` made by one of four constructors —
:func:`allowed`, :func:`denied`, :func:`patched`, :func:`failed_open` — or, when the answer needs
the workload's prediction, a :class:`PendingReview` that the pipeline (``pipeline.py``) completes.
Only a body that is not an AdmissionReview at all is refused (HTTP 400), because then there is no
uid to answer; everything else gets a valid AdmissionReview back.
"""

from __future__ import annotations

import base64
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, Union

import msgspec

from webhook.model.schema import InferenceRequest
from webhook.model.service import WorkloadPrediction

ADMISSION_API_VERSION = "admission.k8s.io/v1"
Outcome = Literal[
    "patched", "unchanged", "skipped", "failed_open", "timed_out", "allowed", "warned", "audited", "denied"
]
Operation = dict[str, Any]  # one JSON patch operation


WARNING_LIMIT = 120  # characters; the apiserver may truncate longer warnings


def fit_warning(text: str) -> str:
    """``text`` cut to the warning limit, marked with an ellipsis when it was cut."""
    return text if len(text) <= WARNING_LIMIT else text[: WARNING_LIMIT - 3] + "..."


class NotAnAdmissionReview(ValueError):
    """The body cannot be answered as an AdmissionReview; the message says why."""


@dataclass(frozen=True)
class AdmissionRequest:
    """The fields of an AdmissionReview's ``request`` that the handlers read, decoded once.

    Values the apiserver never sends malformed are kept as sent, so a handler's checks
    (``operation in ("CREATE", "UPDATE")``) behave on garbage as they would on the raw JSON.
    """

    uid: str
    operation: object  # CREATE, UPDATE, DELETE or CONNECT
    api_version: str | None  # of request.kind: the object's group/version
    kind: str | None  # request.kind.kind
    resource: Mapping[str, Any]  # request.resource: {group, version, resource}
    sub_resource: str  # "" for the object itself, else "scale", "status", ...
    namespace: str
    name: str
    object: object  # request.object, as sent


def api_version_and_kind(gvk: Any) -> tuple[str | None, str | None]:
    """(apiVersion, kind) of a GroupVersionKind stanza, or (None, None) when it is malformed."""
    if not isinstance(gvk, Mapping):
        return None, None
    group, version, kind = gvk.get("group"), gvk.get("version"), gvk.get("kind")
    if not isinstance(version, str) or not isinstance(kind, str):
        return None, None
    return (f"{group}/{version}" if group else version), kind


def decode_request(request: Mapping[str, Any]) -> AdmissionRequest:
    """An AdmissionRequest of a ``request`` stanza whose ``uid`` is a non-empty string."""
    api_version, kind = api_version_and_kind(request.get("kind"))
    resource = request.get("resource")
    sub_resource = request.get("subResource")
    return AdmissionRequest(
        uid=request["uid"],
        operation=request.get("operation"),
        api_version=api_version,
        kind=kind,
        resource=resource if isinstance(resource, Mapping) else {},
        sub_resource=str(sub_resource) if sub_resource else "",
        namespace=str(request.get("namespace") or ""),
        name=str(request.get("name") or ""),
        object=request.get("object"),
    )


def parse_review(body: Any) -> AdmissionRequest:
    """Check the envelope and decode its ``request`` stanza."""
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
    return decode_request(request)


@dataclass(frozen=True)
class AdmissionResponse:
    """A handler's answer; ``outcome`` labels it in metrics, ``basis`` says what predicted, if anything did."""

    uid: str
    outcome: Outcome
    allowed: bool = True
    patch: tuple[Operation, ...] = ()
    warnings: tuple[str, ...] = ()
    denial: str | None = None  # the 403 message, when denied
    audit_annotations: Mapping[str, str] | None = None
    basis: str | None = None

    @property
    def review(self) -> dict[str, Any]:
        """The AdmissionReview sent back to the apiserver."""
        response: dict[str, Any] = {"uid": self.uid, "allowed": self.allowed}
        if self.patch:
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(msgspec.json.encode(self.patch)).decode()
        if self.denial is not None:
            response["status"] = {"code": 403, "reason": "Forbidden", "message": self.denial}
        if self.warnings:
            response["warnings"] = list(self.warnings)
        if self.audit_annotations:
            response["auditAnnotations"] = dict(self.audit_annotations)
        return {"apiVersion": ADMISSION_API_VERSION, "kind": "AdmissionReview", "response": response}


def allowed(uid: str, outcome: Outcome = "allowed", warnings: tuple[str, ...] | list[str] = (),
            audit_annotations: Mapping[str, str] | None = None) -> AdmissionResponse:
    """Admit the object unchanged (``outcome`` says why: skipped, allowed, warned, audited)."""
    return AdmissionResponse(uid, outcome, warnings=tuple(warnings), audit_annotations=audit_annotations)


def denied(uid: str, message: str, warnings: tuple[str, ...] | list[str] = ()) -> AdmissionResponse:
    """Refuse the object with a 403 whose message kubectl shows."""
    return AdmissionResponse(uid, "denied", allowed=False, warnings=tuple(warnings), denial=message)


def patched(uid: str, patch: tuple[Operation, ...], basis: str | None = None,
            warnings: tuple[str, ...] | list[str] = ()) -> AdmissionResponse:
    """Admit the object with a JSON patch; an empty patch is an unchanged answer."""
    return AdmissionResponse(uid, "patched" if patch else "unchanged", patch=patch, warnings=tuple(warnings),
                             basis=basis)


def failed_open(uid: str, warning: str, outcome: Outcome = "failed_open") -> AdmissionResponse:
    """Admit the object although we could not do our part, and say why: the cluster must not
    stop deploying because of us."""
    return AdmissionResponse(uid, outcome, warnings=(warning,))


class PendingReview(ABC):
    """A review whose answer needs the workload's prediction (``pipeline.py`` gets it, from the
    cache on the event loop or by running the model in a worker thread)."""

    request: InferenceRequest
    spec_hash: str

    @abstractmethod
    def complete(self, prediction: WorkloadPrediction) -> AdmissionResponse: ...


Answer = Union[AdmissionResponse, PendingReview]


class Handler(Protocol):
    """One admission webhook's logic: a decoded request in, an answer (or a pending one) out."""

    @property
    def not_done(self) -> str:
        """What did not happen when the handler fails open: "not annotated", "budget not checked"."""
        ...

    def handle(self, request: AdmissionRequest) -> Answer: ...

    def failure(self, request: AdmissionRequest, step: str, error: Exception) -> str:
        """The warning when ``step`` ("review" or "prediction") raised ``error``."""
        ...
