"""Energy budget policy: cluster defaults from a file, per-namespace overrides by annotation.

The file (YAML, usually a mounted ConfigMap)::

    apiVersion: energetiscope.io/v1
    kind: BudgetPolicy
    defaultMode: warn              # enforce | warn | audit
    checkedValue: point            # point | p90: which prediction is held against the budget
    defaults:
      maxWorkloadWatts: 500        # W for one workload; omit for no limit
      quotaWatts: 2000             # W for all annotated workloads of a namespace; omit for none
      maxRunJoules: 3.6e6          # J for one run of a Job or CronJob; omit for no limit
      quotaJoulesPerDay: 1.728e8   # J a day for a namespace: CronJobs' runs, Jobs' one run, 24 h of the rest
    exemptNamespaces: [kube-system, energetiscope]
    whenInventoryNotSynced: allow-with-warning   # allow | allow-with-warning | deny
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from webhook.files import WatchedFile
from webhook.model.schema import ANNOTATION_PREFIX

log = logging.getLogger(__name__)

MAX_WORKLOAD_WATTS = ANNOTATION_PREFIX + "max-workload-watts"
QUOTA_WATTS = ANNOTATION_PREFIX + "quota-watts"
MAX_RUN_JOULES = ANNOTATION_PREFIX + "max-run-joules"
QUOTA_JOULES_PER_DAY = ANNOTATION_PREFIX + "quota-joules-per-day"
BUDGET_MODE = ANNOTATION_PREFIX + "budget-mode"

Mode = Literal["enforce", "warn", "audit"]
MODES: tuple[Mode, ...] = ("enforce", "warn", "audit")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class BudgetDefaults(_Strict):
    max_workload_watts: float | None = Field(default=None, alias="maxWorkloadWatts", ge=0)
    quota_watts: float | None = Field(default=None, alias="quotaWatts", ge=0)
    max_run_joules: float | None = Field(default=None, alias="maxRunJoules", ge=0)
    quota_joules_per_day: float | None = Field(default=None, alias="quotaJoulesPerDay", ge=0)


class BudgetPolicy(_Strict):
    api_version: Literal["energetiscope.io/v1"] = Field(default="energetiscope.io/v1", alias="apiVersion")
    kind: Literal["BudgetPolicy"] = "BudgetPolicy"
    default_mode: Mode = Field(default="warn", alias="defaultMode")
    checked_value: Literal["point", "p90"] = Field(default="point", alias="checkedValue")
    defaults: BudgetDefaults = BudgetDefaults()
    exempt_namespaces: frozenset[str] = Field(
        default=frozenset({"kube-system", "energetiscope"}), alias="exemptNamespaces"
    )
    when_inventory_not_synced: Literal["allow", "allow-with-warning", "deny"] = Field(
        default="allow-with-warning", alias="whenInventoryNotSynced"
    )


class PolicyError(ValueError):
    """The policy file is unusable; the message names the file and the field."""


def parse_policy(text: str, source: str) -> BudgetPolicy:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(f"{source}: invalid YAML: {exc}") from None
    try:
        return BudgetPolicy.model_validate(document or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(document)"
        raise PolicyError(f"{source}: {field}: {first['msg']}") from None


Unit = Literal["W", "J"]


@dataclass(frozen=True)
class Limit:
    amount: float  # in ``unit``
    source: str  # where it was set, for the user: "namespace shop" or "policy file"
    how_to_change: str
    unit: Unit = "W"


@dataclass(frozen=True)
class NamespaceBudget:
    mode: Mode
    max_workload: Limit | None
    quota: Limit | None
    max_run: Limit | None = None  # J, one run of a Job or CronJob
    quota_per_day: Limit | None = None  # J a day, the namespace's total
    problems: tuple[str, ...] = ()  # namespace annotations that were ignored, and why


def _annotation_amount(namespace: str, annotations: Mapping[str, str], key: str, unit: Unit,
                       problems: list[str]) -> float | None:
    raw = annotations.get(key)
    if raw is None:
        return None
    try:
        amount = float(raw)
    except ValueError:
        amount = math.nan
    if not math.isfinite(amount) or amount < 0:
        problems.append(f"namespace {namespace}: {key}={raw!r} is not a number of {unit} >= 0; ignored")
        return None
    return amount


def namespace_budget(policy: BudgetPolicy, namespace: str, annotations: Mapping[str, str]) -> NamespaceBudget:
    problems: list[str] = []
    mode_raw = annotations.get(BUDGET_MODE)
    mode: Mode = policy.default_mode
    if mode_raw is not None:
        if mode_raw in MODES:
            mode = mode_raw  # type: ignore[assignment]
        else:
            problems.append(f"namespace {namespace}: {BUDGET_MODE}={mode_raw!r} is not enforce, warn or audit; ignored")

    def limit(key: str, default: float | None, field: str, unit: Unit = "W") -> Limit | None:
        amount = _annotation_amount(namespace, annotations, key, unit, problems)
        if amount is not None:
            return Limit(amount, f"namespace {namespace}", f"kubectl annotate ns {namespace} {key}=<{unit}> --overwrite",
                         unit)
        if default is not None:
            return Limit(default, "policy file", f"edit {field} in the policy, or annotate ns {namespace} {key}", unit)
        return None

    return NamespaceBudget(
        mode=mode,
        max_workload=limit(MAX_WORKLOAD_WATTS, policy.defaults.max_workload_watts, "defaults.maxWorkloadWatts"),
        quota=limit(QUOTA_WATTS, policy.defaults.quota_watts, "defaults.quotaWatts"),
        max_run=limit(MAX_RUN_JOULES, policy.defaults.max_run_joules, "defaults.maxRunJoules", "J"),
        quota_per_day=limit(QUOTA_JOULES_PER_DAY, policy.defaults.quota_joules_per_day, "defaults.quotaJoulesPerDay", "J"),
        problems=tuple(problems),
    )


class PolicyStore:
    """The policy in force, reloaded from its file when the file changes.

    A file that becomes unreadable keeps the policy already in force, like a bad model does.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.policy = BudgetPolicy()
        self.error: str | None = None
        self._file = WatchedFile(path)
        self._lock = threading.Lock()

    def artifact_changed(self) -> bool:
        return self._file.changed()

    def load(self) -> bool:
        with self._lock:
            if self.path is None:
                return True
            self._file.mark_seen()
            try:
                self.policy = parse_policy(self.path.read_text(), str(self.path))
            except (OSError, PolicyError) as exc:
                self.error = str(exc)
                log.error("budget policy not loaded, keeping the one in force: %s", exc)
                return False
            self.error = None
            log.info("budget policy loaded from %s", self.path)
            return True
