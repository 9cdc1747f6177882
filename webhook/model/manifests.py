"""YAML manifests -> workload objects, with every other document accounted for.

Used by ``/infer/from-yaml``, ``/predict/from-yaml`` and ``energetiscope predict``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Any

import yaml

from webhook.model.extract import ExtractionError, to_inference_request, workload_kind_of
from webhook.model.schema import InferenceRequest

MAX_DOCUMENTS = 1000  # per request to the webhook; the trainer reads files without a cap (None)


class ManifestError(ValueError):
    """The text is not valid YAML; the message says where."""


@dataclass(frozen=True)
class Located:
    """Where an object sits in the stream: ``document`` counts from 1; ``item`` indexes a List."""

    document: int
    item: int | None = None

    def describe(self) -> str:
        return f"document {self.document}" + (f", items[{self.item}]" if self.item is not None else "")

    def as_dict(self) -> dict[str, Any]:
        return {"document": self.document, "item": self.item}


@dataclass
class ManifestReport:
    requests: list[tuple[Located, InferenceRequest]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)


def _identity(obj: Mapping[str, Any]) -> dict[str, Any]:
    metadata = obj.get("metadata") if isinstance(obj.get("metadata"), Mapping) else {}
    return {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "name": metadata.get("name")}


def load_documents(text: str, max_documents: int | None = MAX_DOCUMENTS) -> list[Any]:
    try:
        documents = []
        for document in yaml.safe_load_all(text):
            documents.append(document)
            if max_documents is not None and len(documents) > max_documents:
                raise ManifestError(f"more than {max_documents} YAML documents in one request")
        return documents
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise ManifestError(f"invalid YAML at {where}: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ManifestError(f"invalid YAML: {exc}") from None
    except RecursionError:
        raise ManifestError("invalid YAML: nested too deeply") from None


def read_manifests(text: str, max_documents: int | None = MAX_DOCUMENTS) -> ManifestReport:
    """Sort each document (and each item of a ``kind: List``) into requests, skipped or errors."""
    report = ManifestReport()
    for number, document in enumerate(load_documents(text, max_documents), start=1):
        if isinstance(document, Mapping) and document.get("kind") == "List" and "items" in document:
            items = document.get("items")
            if not isinstance(items, list):
                report.errors.append({**Located(number).as_dict(), "field": "items", "problem": "expected a list"})
                continue
            for index, item in enumerate(items):
                _classify(item, Located(number, index), report)
        else:
            _classify(document, Located(number), report)
    return report


def _classify(document: Any, where: Located, report: ManifestReport) -> None:
    if document is None:
        report.skipped.append({**where.as_dict(), "reason": "empty document"})
        return
    if not isinstance(document, Mapping):
        report.skipped.append({**where.as_dict(), "reason": f"not an object but a {type(document).__name__}"})
        return
    identity = _identity(document)
    if workload_kind_of(document) is None:
        if not document.get("kind"):
            reason = "no kind: not a Kubernetes object"
        else:
            reason = f"{identity['apiVersion']}/{identity['kind']} is not a workload kind"
        report.skipped.append({**where.as_dict(), **identity, "reason": reason})
        return
    try:
        report.requests.append((where, to_inference_request(document)))
    except ExtractionError as exc:
        report.errors.append({**where.as_dict(), **identity, "field": exc.field, "problem": exc.problem})
