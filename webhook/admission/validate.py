"""The validating admission handler: hold each workload's predicted power against its budgets.

The prediction is recomputed here (from the cache, by spec hash), never read from the
object's annotations: an object cannot vouch for itself. The namespace's existing spend
comes from the inventory, with the object's own old contribution left out, so an UPDATE
replaces it rather than adding to it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from webhook.admission.inventory import WorkloadInventory
from webhook.admission.pipeline import review_now
from webhook.admission.policy import BudgetPolicy, Limit, NamespaceBudget, PolicyStore, namespace_budget
from webhook.admission.reading import ObjectReader, read_object
from webhook.admission.review import (
    AdmissionRequest,
    AdmissionResponse,
    Answer,
    PendingReview,
    allowed,
    denied,
    failed_open,
    fit_warning as _fit,
)
from webhook.model.extract import ExtractionError
from webhook.model.kinds import RunsKind, has_controller, kind_named, scalable_kind, workload_kind
from webhook.model.runs import joules_per_day
from webhook.model.schedule import SECONDS_PER_DAY
from webhook.model.schema import InferenceRequest
from webhook.model.service import PredictionService, WorkloadPrediction

AUDIT_KEY = "budget-exceeded"  # the apiserver prefixes it with the webhook's name


@dataclass(frozen=True)
class Budgets:
    policy: PolicyStore
    inventory: WorkloadInventory | None  # None when the webhook has no API access


@dataclass(frozen=True)
class Demand:
    """The power a workload will draw after this request, and the energy of one run and of a
    day, in the checked value (point or p90)."""

    kind: str
    namespace: str
    name: str
    pods: int
    pod_watts: float
    pod_watts_p10: float | None = None
    pod_watts_p90: float | None = None
    runs: RunsKind = "none"
    run_joules: float | None = None  # one run; None when its length is unknown or the kind does not run
    run_seconds: float | None = None
    run_bound: str | None = None  # "upper" when the run time is activeDeadlineSeconds
    runs_per_day: float | None = None  # CronJobs

    @property
    def watts(self) -> float:
        return self.pods * self.pod_watts

    @property
    def joules_per_day(self) -> float | None:
        return joules_per_day(self.runs, self.watts, self.run_joules, self.runs_per_day)

    def who(self, width: int = 60) -> str:
        name = f"{self.namespace}/{self.name or '(generated)'}"
        if len(name) > width:
            name = name[: width - 3] + "..."
        return f"{self.kind} {name}"

    def power_detail(self) -> str:
        interval = ""
        if self.pod_watts_p10 is not None and self.pod_watts_p90 is not None:
            interval = f", pod p10-p90 {self.pod_watts_p10:.2f}-{self.pod_watts_p90:.2f} W"
        return f"{self.pods} pods x {self.pod_watts:.2f} W{interval}"

    def run_detail(self) -> str:
        bound = ", an upper bound: activeDeadlineSeconds" if self.run_bound == "upper" else ""
        return f"{self.pods} pods x {self.pod_watts:.2f} W x {self.run_seconds or 0:g} s{bound}"

    def day_detail(self) -> str:
        if self.runs == "scheduled":
            return f"{self.runs_per_day or 0:.4g} runs a day x {_show(self.run_joules or 0, 'J')}"
        if self.runs == "once" and self.run_joules is not None and self.run_joules < self.watts * SECONDS_PER_DAY:
            return "one run"
        return f"{self.watts:.1f} W x 86400 s"


def _show(amount: float, unit: str) -> str:
    # W to a tenth; J to the joule, since runs and days reach millions of them.
    if unit == "W":
        return f"{amount:.1f} W"
    return f"{amount:.0f} J" if amount >= 1 or amount == 0 else f"{amount:.3g} J"


def _show_limit(limit: Limit) -> str:
    return f"{limit.amount:g} W" if limit.unit == "W" else _show(limit.amount, "J")


# What each limit holds: the demand's own figure, how it was made, and whether the limit is
# on the namespace's total.
_MEASURES: dict[str, tuple[Callable[[Demand], float | None], Callable[[Demand], str], str, bool]] = {
    "max-workload-watts": (lambda d: d.watts, Demand.power_detail, "", False),
    "quota-watts": (lambda d: d.watts, Demand.power_detail, "", True),
    "max-run-joules": (lambda d: d.run_joules, Demand.run_detail, " per run", False),
    "quota-joules-per-day": (lambda d: d.joules_per_day, Demand.day_detail, " a day", True),
}


@dataclass(frozen=True)
class Violation:
    limit_name: str  # max-workload-watts, quota-watts, max-run-joules or quota-joules-per-day
    limit: Limit
    predicted: float  # what is held against the limit, in its unit

    def warning(self, demand: Demand) -> str:
        return _fit(
            f"energetiscope: {demand.who(30)} {_show(self.predicted, self.limit.unit)} > {self.limit_name} "
            f"{_show_limit(self.limit)} ({self.limit.source})"
        )

    def explanation(self, demand: Demand, checked_value: str) -> str:
        own, detail, per, total = _MEASURES[self.limit_name]
        subject = "the namespace total with it" if total else "it"
        value = "p90" if checked_value == "p90" else "predicted"
        unit = self.limit.unit
        return (
            f"energetiscope: {demand.who(120)} is {value} at {_show(own(demand) or 0, unit)}{per} "
            f"({detail(demand)}); {subject} would be {_show(self.predicted, unit)}, above {self.limit_name} "
            f"{_show_limit(self.limit)} set by {self.limit.source}. To change it: {self.limit.how_to_change}"
        )


@dataclass(frozen=True)
class Workload:
    """A workload object whose demand needs its prediction."""

    kind: str
    name: str
    request: InferenceRequest
    spec_hash: str


@dataclass(frozen=True)
class PendingValidation(PendingReview):
    uid: str
    workload: Workload
    namespace: str
    policy: BudgetPolicy
    budgets: Budgets

    @property
    def request(self) -> InferenceRequest:  # type: ignore[override]
        return self.workload.request

    @property
    def spec_hash(self) -> str:  # type: ignore[override]
        return self.workload.spec_hash

    def complete(self, prediction: WorkloadPrediction) -> AdmissionResponse:
        pod, run = prediction.pod, prediction.runs.run
        p90 = self.policy.checked_value == "p90"
        kind = kind_named(self.workload.kind)
        demand = Demand(
            kind=self.workload.kind,
            namespace=self.namespace,
            name=self.workload.name,
            pods=prediction.pods,
            pod_watts=pod.power_watts_p90 if p90 else pod.power_watts,
            pod_watts_p10=pod.power_watts_p10,
            pod_watts_p90=pod.power_watts_p90,
            runs="none" if kind is None else kind.runs,
            run_joules=None if run is None else (run.joules.p90 if p90 else run.joules.p50),
            run_seconds=None if run is None else (run.seconds.p90 if p90 else run.seconds.p50),
            run_bound=None if run is None else run.bound,
            runs_per_day=prediction.runs.runs_per_day,
        )
        return judge(self.uid, demand, self.policy, self.budgets)


class ValidatingHandler:
    """``/validate``: a decoded request in, allowed, warned, audited or denied out."""

    not_done = "budget not checked"

    def __init__(self, budgets: Budgets, reader: ObjectReader | None = None) -> None:
        self.budgets = budgets
        self.reader = reader  # objects already read, or None to read every one afresh

    def failure(self, request: AdmissionRequest, step: str, error: Exception) -> str:
        # Never block the cluster on our own failure.
        return f"energetiscope: budget not checked ({type(error).__name__})"

    def handle(self, request: AdmissionRequest) -> Answer:
        if request.operation not in ("CREATE", "UPDATE"):
            return allowed(request.uid, "skipped")
        policy = self.budgets.policy.policy
        if request.namespace in policy.exempt_namespaces:
            return allowed(request.uid, "skipped")
        if request.sub_resource == "scale":
            return self._scale(request, policy)
        if request.sub_resource:
            return allowed(request.uid, "skipped")
        return self._workload(request, policy)

    def _scale(self, request: AdmissionRequest, policy: BudgetPolicy) -> Answer:
        """New replicas x the pod power the inventory holds for the scaled workload."""
        uid, namespace, name = request.uid, request.namespace, request.name
        # The scale subresource names its parent by resource.
        scaled = scalable_kind(request.resource.get("group", ""), request.resource.get("resource", ""))
        scale = request.object if isinstance(request.object, Mapping) else {}
        spec = scale.get("spec") if isinstance(scale.get("spec"), Mapping) else {}
        replicas = spec.get("replicas")
        if scaled is None or not isinstance(replicas, int):
            return allowed(uid, "skipped")
        inventory = self.budgets.inventory
        current = inventory.workload((namespace, scaled.name, name)) if inventory else None
        if current is None:
            if inventory is not None and inventory.synced:
                return allowed(uid, "skipped")  # not annotated: nothing known to hold against the budget
            return failed_open(uid, _fit(f"energetiscope: {scaled.name} {namespace}/{name} scale not checked: "
                                         "inventory not synced"))
        pod_watts = current.pod_watts_p90 if policy.checked_value == "p90" else current.pod_watts
        demand = Demand(scaled.name, namespace, name, replicas, pod_watts, None, current.pod_watts_p90)
        return judge(uid, demand, policy, self.budgets)

    def _workload(self, request: AdmissionRequest, policy: BudgetPolicy) -> Answer:
        """The object's own demand, once its prediction is known."""
        kind, obj = request.kind, request.object
        if workload_kind(kind, request.api_version) is None or not isinstance(obj, Mapping):
            return allowed(request.uid, "skipped")
        metadata = obj.get("metadata") if isinstance(obj.get("metadata"), Mapping) else {}
        if has_controller(metadata):
            return allowed(request.uid, "skipped")  # its owner was checked when it was admitted
        typed = {"apiVersion": request.api_version, "kind": kind, **obj}
        try:
            inference_request, hash_ = read_object(typed, self.reader)
        except ExtractionError:
            return allowed(request.uid, "skipped")  # the mutating webhook has already warned about the field
        name = str(metadata.get("name") or request.name)
        workload = Workload(str(kind), name, inference_request, hash_)
        return PendingValidation(request.uid, workload, request.namespace, policy, self.budgets)


def validate(request: AdmissionRequest, service: PredictionService, budgets: Budgets,
             reader: ObjectReader | None = None) -> AdmissionResponse:
    """One review answered in the calling thread (the server answers through ``ReviewPipeline``)."""
    return review_now(ValidatingHandler(budgets, reader), request, service)


def judge(uid: str, demand: Demand, policy: BudgetPolicy, budgets: Budgets) -> AdmissionResponse:
    """Hold ``demand`` against its namespace's budgets, in the namespace's mode."""
    namespace = demand.namespace
    inventory = budgets.inventory
    annotations = inventory.namespace_annotations(namespace) if inventory else {}
    budget: NamespaceBudget = namespace_budget(policy, namespace, annotations)
    warnings = [_fit(p) for p in budget.problems]
    unchecked: list[str] = []  # limits that apply but that the prediction cannot be held to
    violations: list[Violation] = []
    if budget.max_workload is not None and demand.watts > budget.max_workload.amount:
        violations.append(Violation("max-workload-watts", budget.max_workload, demand.watts))
    if budget.max_run is not None and demand.runs != "none":
        if demand.run_joules is None:
            unchecked.append(f"energetiscope: {demand.who(30)}: max-run-joules not checked: no run time; "
                             "set activeDeadlineSeconds")
        elif demand.run_joules > budget.max_run.amount:
            violations.append(Violation("max-run-joules", budget.max_run, demand.run_joules))
    if budget.quota is not None or budget.quota_per_day is not None:
        if inventory is None or not inventory.synced:
            rule = policy.when_inventory_not_synced
            note = f"energetiscope: quota of namespace {namespace} not checked: workload inventory not synced"
            if rule == "deny":
                return denied(uid, note)
            if rule == "allow-with-warning":
                warnings.append(_fit(note))
        else:
            excluding = (namespace, demand.kind, demand.name)
            if budget.quota is not None:
                others = inventory.namespace_total(namespace, policy.checked_value, excluding=excluding)
                if others + demand.watts > budget.quota.amount:
                    violations.append(Violation("quota-watts", budget.quota, others + demand.watts))
            if budget.quota_per_day is not None:
                daily = demand.joules_per_day
                if daily is None:
                    unchecked.append(f"energetiscope: {demand.who(30)}: not in quota-joules-per-day: no run time; "
                                     "set activeDeadlineSeconds")
                else:
                    others = inventory.namespace_joules_per_day(namespace, policy.checked_value, excluding=excluding)
                    if others + daily > budget.quota_per_day.amount:
                        violations.append(Violation("quota-joules-per-day", budget.quota_per_day, others + daily))
    if budget.mode != "audit":
        warnings += [_fit(text) for text in unchecked]

    if not violations:
        return allowed(uid, "allowed", warnings)
    if budget.mode == "enforce":
        return denied(uid, " ".join(v.explanation(demand, policy.checked_value) for v in violations), warnings)
    if budget.mode == "warn":
        warnings += [v.warning(demand) for v in violations]
        warnings.append(_fit(f"energetiscope: to change it: {violations[0].limit.how_to_change}"))
        return allowed(uid, "warned", warnings)
    audit = {AUDIT_KEY: " ".join(v.explanation(demand, policy.checked_value) for v in violations)}
    return allowed(uid, "audited", warnings, audit_annotations=audit)
