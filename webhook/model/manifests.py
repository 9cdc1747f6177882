"""YAML manifests -> workload objects, with every other document accounted for.

Used by ``/infer/from-yaml``, ``/predict/from-yaml``, ``energetiscope predict`` and ``diff``, and
by the trainer's ``--manifests``. Each object keeps the line it starts on, so that ``diff`` can
point a pull request's annotations at it.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from webhook.files import STDIN_NAME, NotUtf8Error, stdin_text, utf8_text
from webhook.model.extract import ExtractionError, to_inference_request, workload_kind_of
from webhook.model.schema import WORKLOAD_KINDS, InferenceRequest

MAX_DOCUMENTS = 1000  # per request to the webhook; the trainer reads files without a cap (None)
STDIN_PATH = "-"  # a path that names standard input
MANIFEST_SUFFIXES: tuple[str, ...] = (".yaml", ".yml", ".json")  # what a directory of manifests holds
# Read item by item: `kind: List`, and the workload kinds' typed lists (DeploymentList, PodList, ...),
# not any kind whose name ends in "List" (a CRD's IPAllowList is an object of its own).
LIST_KINDS = frozenset({"List", *(f"{kind}List" for kind in WORKLOAD_KINDS)})


class ManifestError(ValueError):
    """The text is not valid YAML; the message says where."""


class TooManyDocuments(ManifestError):
    """More documents than one request may hold."""


@dataclass(frozen=True)
class Located:
    """Where an object sits in the stream: ``document`` counts from 1; ``item`` indexes a List."""

    document: int
    item: int | None = None
    # 1-based line where the object starts; not part of the answers' shape (as_dict).
    line: int | None = field(default=None, compare=False)

    def describe(self) -> str:
        return f"document {self.document}" + (f", items[{self.item}]" if self.item is not None else "")

    def as_dict(self) -> dict[str, Any]:
        return {"document": self.document, "item": self.item}


@dataclass
class ManifestReport:
    requests: list[tuple[Located, InferenceRequest]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    # The object each entry of ``requests`` was read from, in the same order.
    objects: list[Mapping[str, Any]] = field(default_factory=list)
    # Where each entry of ``errors`` is, and the object when there is one, in the same order.
    error_sources: list[tuple[Located, Mapping[str, Any] | None]] = field(default_factory=list)


def _identity(obj: Mapping[str, Any]) -> dict[str, Any]:
    metadata = obj.get("metadata") if isinstance(obj.get("metadata"), Mapping) else {}
    return {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "name": metadata.get("name")}


@dataclass(frozen=True)
class Document:
    """One YAML document, the 1-based line it starts on, and, for a ``kind: List``, its items' lines."""

    value: Any
    line: int
    item_lines: tuple[int, ...] = ()


def _item_lines(node: yaml.Node) -> tuple[int, ...]:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == "items" and isinstance(value, yaml.SequenceNode):
                return tuple(item.start_mark.line + 1 for item in value.value)
    return ()


def load_located_documents(text: str, max_documents: int | None = MAX_DOCUMENTS) -> list[Document]:
    """The documents of a YAML stream with where each starts (what ``yaml.safe_load_all`` does,
    keeping the composed node's position)."""
    try:
        return _compose_documents(_FastLoader, text, max_documents)
    except TooManyDocuments:
        raise
    except ManifestError:
        if not hasattr(yaml, "CSafeLoader"):
            raise
        # libyaml is ~10x faster (a diff reads thousands of documents), but its messages differ from
        # the pure-Python parser's in wording: read a broken stream again for the established message.
        return _compose_documents(_SafeLoader, text, max_documents)


# YAML as Kubernetes reads it: sigs.k8s.io/yaml, which is go-yaml v2 decoding into interface{} and
# then JSON. Where PyYAML's YAML 1.1 reads otherwise, go-yaml v2's rules (its resolve.go) win:
# - a date (`name: 2024-01-15`, or tagged `!!timestamp`) and a colon-separated number (`12:30`,
#   base 60 in YAML 1.1) are strings; a lone `=` (kube-prometheus' CRDs: `enum: ['!=', =, =~]`) is "=";
# - a number is what Go's strconv reads once underscores are dropped: ParseInt with base prefix
#   (0x, 0o, 0b, a leading 0 for octal), else a float `[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`
#   (`1e3`, `08`), and a whole float is an integer once it passes through JSON (`replicas: 1e3` is 1000);
# - y, Y, n and N are booleans too;
# - an unknown tag (`!reference [...]` in a CI file beside the manifests) is ignored: the node is
#   read as the plain scalar, list or map it is.
_RESOLVED_OTHERWISE_IN_KUBERNETES = frozenset({"tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:value",
                                    "tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:bool"})
_GO_NUMBER_TAG = "tag:yaml.org,2002:int"
_GO_NUMBER = re.compile(r"^(?:[-+]?[0-9_]*\.?[0-9_]*(?:[eE][-+]?[0-9_]+)?|[-+]?0[xXoObB][0-9a-fA-F_]+"
                        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")
_GO_INTEGER = re.compile(r"^[-+]?(?:0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+|0[0-7]*|[1-9][0-9]*)$")
_GO_FLOAT = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$")
_GO_SPECIAL_FLOATS = {".inf": math.inf, "+.inf": math.inf, "-.inf": -math.inf, ".nan": math.nan}
_GO_BOOL_TAG = "tag:yaml.org,2002:bool"
_GO_BOOLEANS = {**dict.fromkeys(("y", "Y", "yes", "Yes", "YES", "on", "On", "ON", "true", "True", "TRUE"), True),
                **dict.fromkeys(("n", "N", "no", "No", "NO", "off", "Off", "OFF", "false", "False", "FALSE"), False)}
# A whole float passes through JSON as an integer below this (Go's encoding/json writes 1e21 on as 1e+21).
_JSON_INTEGER_LIMIT = 1e21


def _go_number(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
    text = node.value.replace("_", "")
    if _GO_INTEGER.match(text):
        sign, digits = (-1, text[1:]) if text.startswith("-") else (1, text.lstrip("+"))
        octal = len(digits) > 1 and digits[0] == "0" and digits[1].isdigit()
        return sign * int(digits, 8 if octal else 0)
    special = _GO_SPECIAL_FLOATS.get(text.lower())
    if special is not None:
        return special
    if not _GO_FLOAT.match(text):
        return node.value  # `.`, `1e`, `+`: words, not numbers
    number = float(text)
    return int(number) if number.is_integer() and abs(number) < _JSON_INTEGER_LIMIT else number


def _go_bool(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
    if node.value not in _GO_BOOLEANS:  # `!!bool yEs`: go-yaml refuses it too
        raise yaml.constructor.ConstructorError(None, None, f"cannot read {node.value!r} as a boolean", node.start_mark)
    return _GO_BOOLEANS[node.value]


def _untagged(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    return loader.construct_scalar(node)


def _as_kubernetes_reads(loader: type[yaml.SafeLoader]) -> type[yaml.SafeLoader]:
    resolvers: dict[Any, list[tuple[str, re.Pattern[str]]]] = {
        first: [(tag, pattern) for tag, pattern in entries if tag not in _RESOLVED_OTHERWISE_IN_KUBERNETES]
        for first, entries in loader.yaml_implicit_resolvers.items()}
    for first in "-+0123456789.":
        resolvers.setdefault(first, []).append((_GO_NUMBER_TAG, _GO_NUMBER))
    for first in {word[0] for word in _GO_BOOLEANS}:
        resolvers.setdefault(first, []).insert(0, (_GO_BOOL_TAG, re.compile(
            "^(?:" + "|".join(re.escape(word) for word in _GO_BOOLEANS) + ")$")))
    kubernetes = type(f"Kubernetes{loader.__name__}", (loader,), {"yaml_implicit_resolvers": resolvers})
    kubernetes.add_constructor(_GO_NUMBER_TAG, _go_number)
    kubernetes.add_constructor(_GO_BOOL_TAG, _go_bool)
    kubernetes.add_constructor("tag:yaml.org,2002:timestamp", _untagged)
    kubernetes.add_constructor(None, _untagged)
    return kubernetes


_SafeLoader = _as_kubernetes_reads(yaml.SafeLoader)
# libyaml's loader when PyYAML was built with it (the wheels are), else the pure-Python one.
_FastLoader: type[yaml.SafeLoader] = _as_kubernetes_reads(getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _compose_documents(loader_class: type[yaml.SafeLoader], text: str, max_documents: int | None) -> list[Document]:
    loader = None
    try:
        # Inside the try: the pure-Python reader refuses control characters as it is built.
        loader = loader_class(text)
        documents: list[Document] = []
        while loader.check_node():
            node = loader.get_node()
            try:
                value = loader.construct_document(node)
            except (ValueError, TypeError, OverflowError) as exc:  # `!!float abc`, `!!int x`: a tag its value defies
                raise yaml.constructor.ConstructorError(None, None, f"cannot read a tagged value: {exc}",
                                                        node.start_mark) from None
            documents.append(Document(value, node.start_mark.line + 1, _item_lines(node)))
            if max_documents is not None and len(documents) > max_documents:
                raise TooManyDocuments(f"more than {max_documents} YAML documents in one request")
        return documents
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise ManifestError(f"invalid YAML at {where}: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ManifestError(f"invalid YAML: {exc}") from None
    except RecursionError:
        raise ManifestError("invalid YAML: nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()


def load_documents(text: str, max_documents: int | None = MAX_DOCUMENTS) -> list[Any]:
    return [document.value for document in load_located_documents(text, max_documents)]


def manifest_files(path: str | os.PathLike[str]) -> list[Path]:
    """A file, or the *.yaml, *.yml and *.json files under a directory (recursively, sorted)."""
    root = Path(path)
    if root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in MANIFEST_SUFFIXES)
        if not files:
            raise ManifestError(f"{path}: no {', '.join('*' + s for s in MANIFEST_SUFFIXES)} files in this directory")
        return files
    if not root.is_file():
        raise ManifestError(f"{path}: no such file or directory")
    return [root]


def manifest_texts(path: str | os.PathLike[str]) -> Iterator[tuple[str, str]]:
    """(file name, text) of each file `manifest_files` finds at `path`, or of standard input for
    `-`, read as UTF-8 (`webhook.files.utf8_text`); ManifestError naming the file when it cannot
    be read or is not UTF-8. `predict`, `diff` and the trainer's `--manifests` all read through it."""
    if str(path) == STDIN_PATH:
        try:
            yield STDIN_NAME, stdin_text()
        except NotUtf8Error as exc:
            raise ManifestError(str(exc)) from None
        return
    for file in manifest_files(path):
        yield str(file), manifest_file_text(file)


def manifest_file_text(file: Path) -> str:
    """One manifest file's text, read as UTF-8; ManifestError naming the file otherwise."""
    try:
        return utf8_text(file.read_bytes(), str(file))
    except NotUtf8Error as exc:
        raise ManifestError(str(exc)) from None
    except OSError as exc:
        raise ManifestError(f"{file}: cannot be read: {exc}") from None


def read_manifests(text: str, max_documents: int | None = MAX_DOCUMENTS) -> ManifestReport:
    """Sort each document (and each item of a ``kind: List`` or a workload kind's typed list such
    as ``DeploymentList``) into requests, skipped or errors."""
    report = ManifestReport()
    for number, located in enumerate(load_located_documents(text, max_documents), start=1):
        document = located.value
        if isinstance(document, Mapping) and document.get("kind") in LIST_KINDS and "items" in document:
            items = document.get("items")
            if not isinstance(items, list):
                report.errors.append({**Located(number).as_dict(), "field": "items", "problem": "expected a list"})
                report.error_sources.append((Located(number, line=located.line), None))
                continue
            for index, item in enumerate(items):
                line = located.item_lines[index] if index < len(located.item_lines) else located.line
                _classify(_typed_item(document, item), Located(number, index, line), report)
        else:
            _classify(document, Located(number, line=located.line), report)
    return report


def _typed_item(listing: Mapping[str, Any], item: Any) -> Any:
    """An item of a typed list (`DeploymentList`) as the object it is: the API server writes its
    items without `kind` and `apiVersion` (`kubectl get --raw`), which the list's kind and
    apiVersion give. A `kind: List` says nothing of its items, and an item's own fields win."""
    kind = listing.get("kind")
    if not isinstance(item, Mapping) or kind == "List" or "kind" in item:
        return item
    return {"apiVersion": listing.get("apiVersion"), "kind": str(kind).removesuffix("List"), **item}


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
        report.objects.append(document)
    except ExtractionError as exc:
        report.errors.append({**where.as_dict(), **identity, "field": exc.field, "problem": exc.problem})
        report.error_sources.append((where, document))
