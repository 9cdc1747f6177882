"""The validating admission handler: hold each workload's predicted power against its budgets.

The prediction is recomputed here (from the cache, by spec hash), never read from the
object's annotations: an object cannot vouch for itself. The namespace's existing spend
comes from the inventory, with the object's own old contribution left out, so an UPDATE
replaces it rather than adding to it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from webhook.admission.review import AdmissionResult, PendingReview, Plan, api_version_and_kind, resolve, review_response
from webhook.model.extract import ExtractionError, is_workload
from webhook.model.kinds import has_controller, scalable_kind
from webhook.admission.inventory import WorkloadInventory
from webhook.admission.policy import BudgetPolicy, Limit, NamespaceBudget, PolicyStore, namespace_budget
from webhook.admission.reading import ObjectReader, read_object
from webhook.model.schema import InferenceRequest
from webhook.model.service import PredictionService, WorkloadPrediction

AUDIT_KEY = "budget-exceeded"  # the apiserver prefixes it with the webhook's name
_WARNING_LIMIT = 120


@dataclass(frozen=True)
class Budgets:
    policy: PolicyStore
    inventory: WorkloadInventory | None  # None when the webhook has no API access


@dataclass(frozen=True)
class Demand:
    """The power a workload will draw after this request, in the checked value (point or p90)."""

    kind: str
    namespace: str
    name: str
    pods: int
    pod_watts: float
    pod_watts_p10: float | None = None
    pod_watts_p90: float | None = None

    @property
    def watts(self) -> float:
        return self.pods * self.pod_watts

    def who(self, width: int = 60) -> str:
        name = f"{self.namespace}/{self.name or '(generated)'}"
        if len(name) > width:
            name = name[: width - 3] + "..."
        return f"{self.kind} {name}"


def _fit(text: str) -> str:
    return text if len(text) <= _WARNING_LIMIT else text[: _WARNING_LIMIT - 3] + "..."


@dataclass(frozen=True)
class Violation:
    limit_name: str  # max-workload-watts or quota-watts
    limit: Limit
    predicted_watts: float  # what is held against the limit

    def warning(self, demand: Demand) -> str:
        return _fit(
            f"energetiscope: {demand.who(40)} {self.predicted_watts:.1f} W > {self.limit_name} "
            f"{self.limit.watts:g} W ({self.limit.source})"
        )

    def explanation(self, demand: Demand, checked_value: str) -> str:
        interval = ""
        if demand.pod_watts_p10 is not None and demand.pod_watts_p90 is not None:
            interval = f", pod p10-p90 {demand.pod_watts_p10:.2f}-{demand.pod_watts_p90:.2f} W"
        subject = "the namespace total with it" if self.limit_name == "quota-watts" else "it"
        value = "p90" if checked_value == "p90" else "predicted"
        return (
            f"energetiscope: {demand.who(120)} is {value} at {demand.watts:.1f} W "
            f"({demand.pods} pods x {demand.pod_watts:.2f} W{interval}); {subject} would be "
            f"{self.predicted_watts:.1f} W, above {self.limit_name} {self.limit.watts:g} W set by "
            f"{self.limit.source}. To change it: {self.limit.how_to_change}"
        )


def _allow(uid: str, outcome: str = "allowed", warnings: list[str] | None = None) -> AdmissionResult:
    return AdmissionResult(review_response(uid, warnings=warnings), outcome, warnings or [])  # type: ignore[arg-type]


@dataclass(frozen=True)
class _Workload:
    """A workload object whose demand needs its prediction."""

    kind: str
    name: str
    request: InferenceRequest
    spec_hash: str


def _demand_or_workload(request: Mapping[str, Any], budgets: Budgets, checked: str,
                        namespace: str, reader: ObjectReader | None) -> Demand | _Workload | None | str:
    """The demand (scale), the workload to predict, None when nothing is to be checked, or a
    warning when it cannot be known."""
    subresource = request.get("subResource")
    if subresource == "scale":
        resource = request.get("resource") if isinstance(request.get("resource"), Mapping) else {}
        # The scale subresource names its parent by resource.
        scaled = scalable_kind(resource.get("group", ""), resource.get("resource", ""))
        scale = request.get("object") if isinstance(request.get("object"), Mapping) else {}
        spec = scale.get("spec") if isinstance(scale.get("spec"), Mapping) else {}
        replicas = spec.get("replicas")
        if scaled is None or not isinstance(replicas, int):
            return None
        kind = scaled.name
        name = str(request.get("name") or "")
        inventory = budgets.inventory
        current = inventory.workload((namespace, kind, name)) if inventory else None
        if current is None:
            if inventory is not None and inventory.synced:
                return None  # not annotated: nothing known to hold against the budget
            return f"energetiscope: {kind} {namespace}/{name} scale not checked: inventory not synced"
        pod_watts = current.pod_watts_p90 if checked == "p90" else current.pod_watts
        return Demand(kind, namespace, name, replicas, pod_watts, None, current.pod_watts_p90)
    if subresource:
        return None
    api_version, kind = api_version_and_kind(request.get("kind"))
    obj = request.get("object")
    if not is_workload(kind, api_version) or not isinstance(obj, Mapping):
        return None
    metadata = obj.get("metadata") if isinstance(obj.get("metadata"), Mapping) else {}
    if has_controller(metadata):
        return None  # its owner was checked when it was admitted
    typed = {"apiVersion": api_version, "kind": kind, **obj}
    try:
        inference_request, hash_ = read_object(typed, reader)
    except ExtractionError:
        return None  # the mutating webhook has already warned about the unreadable field
    return _Workload(str(kind), str(metadata.get("name") or request.get("name") or ""), inference_request, hash_)


@dataclass(frozen=True)
class PendingValidation(PendingReview):
    uid: str
    workload: _Workload
    namespace: str
    policy: BudgetPolicy
    budgets: Budgets

    @property
    def request(self) -> InferenceRequest:  # type: ignore[override]
        return self.workload.request

    @property
    def spec_hash(self) -> str:  # type: ignore[override]
        return self.workload.spec_hash

    def fail(self, error: Exception) -> AdmissionResult:
        return _budget_not_checked(self.uid, error)

    def complete(self, prediction: WorkloadPrediction) -> AdmissionResult:
        pod = prediction.pod
        demand = Demand(
            kind=self.workload.kind,
            namespace=self.namespace,
            name=self.workload.name,
            pods=prediction.pods,
            pod_watts=pod.power_watts_p90 if self.policy.checked_value == "p90" else pod.power_watts,
            pod_watts_p10=pod.power_watts_p10,
            pod_watts_p90=pod.power_watts_p90,
        )
        return _judge(self.uid, demand, self.namespace, self.policy, self.budgets)


def _budget_not_checked(uid: str, error: Exception) -> AdmissionResult:
    # Never block the cluster on our own failure.
    return _allow(uid, "failed_open", [f"energetiscope: budget not checked ({type(error).__name__})"])


def plan_validation(request: Mapping[str, Any], budgets: Budgets, reader: ObjectReader | None = None) -> Plan:
    uid: str = request["uid"]
    if request.get("operation") not in ("CREATE", "UPDATE"):
        return _allow(uid, "skipped")
    policy = budgets.policy.policy
    namespace = str(request.get("namespace") or "")
    if namespace in policy.exempt_namespaces:
        return _allow(uid, "skipped")
    try:
        needed = _demand_or_workload(request, budgets, policy.checked_value, namespace, reader)
    except Exception as exc:
        return _budget_not_checked(uid, exc)
    if needed is None:
        return _allow(uid, "skipped")
    if isinstance(needed, str):
        return _allow(uid, "failed_open", [_fit(needed)])
    if isinstance(needed, _Workload):
        return PendingValidation(uid, needed, namespace, policy, budgets)
    return _judge(uid, needed, namespace, policy, budgets)


def validate(request: Mapping[str, Any], service: PredictionService, budgets: Budgets) -> AdmissionResult:
    return resolve(plan_validation(request, budgets), service)


def _judge(uid: str, demand: Demand, namespace: str, policy: BudgetPolicy, budgets: Budgets) -> AdmissionResult:
    inventory = budgets.inventory
    annotations = inventory.namespace_annotations(namespace) if inventory else {}
    budget: NamespaceBudget = namespace_budget(policy, namespace, annotations)
    warnings = [_fit(p) for p in budget.problems]
    violations: list[Violation] = []
    if budget.max_workload is not None and demand.watts > budget.max_workload.watts:
        violations.append(Violation("max-workload-watts", budget.max_workload, demand.watts))
    if budget.quota is not None:
        if inventory is None or not inventory.synced:
            rule = policy.when_inventory_not_synced
            note = f"energetiscope: quota of namespace {namespace} not checked: workload inventory not synced"
            if rule == "deny":
                return AdmissionResult(review_response(uid, allowed=False, denial=note), "denied", [])
            if rule == "allow-with-warning":
                warnings.append(_fit(note))
        else:
            others = inventory.namespace_total(
                namespace, policy.checked_value, excluding=(namespace, demand.kind, demand.name)
            )
            if others + demand.watts > budget.quota.watts:
                violations.append(Violation("quota-watts", budget.quota, others + demand.watts))

    if not violations:
        return _allow(uid, "allowed", warnings)
    if budget.mode == "enforce":
        denial = " ".join(v.explanation(demand, policy.checked_value) for v in violations)
        return AdmissionResult(review_response(uid, allowed=False, denial=denial, warnings=warnings), "denied", warnings)
    if budget.mode == "warn":
        warnings += [v.warning(demand) for v in violations]
        warnings.append(_fit(f"energetiscope: to change it: {violations[0].limit.how_to_change}"))
        return _allow(uid, "warned", warnings)
    audit = {AUDIT_KEY: " ".join(v.explanation(demand, policy.checked_value) for v in violations)}
    return AdmissionResult(review_response(uid, warnings=warnings, audit_annotations=audit), "audited", warnings)
