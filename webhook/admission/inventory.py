"""What each namespace already spends: a list+watch cache of annotated workloads.

The budget webhook must not call the API per admission request, so it keeps the power of
every annotated workload, and every namespace's budget annotations, current with one
list+watch per kind. Objects that a controller owns (a Deployment's ReplicaSets, a
CronJob's Jobs, any controller's Pods) are left out: their owner already counts them.

The apiserver restarts, etcd restarts, connections drop and watches expire; the watcher
re-lists on 410 Gone, retries a failed list or watch with capped exponential backoff, bounds
every watch with ``timeoutSeconds`` (and a read timeout, for a stream that goes silent), and
marks its kind unsynced from a failed list or watch until a list succeeds again, so that
``whenInventoryNotSynced`` decides meanwhile instead of totals that may be stale.
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from webhook.admission import annotations as keys
from webhook.model.kinds import RunsKind, has_controller, kind_named
from webhook.model.runs import joules_per_day

log = logging.getLogger(__name__)

WorkloadKey = tuple[str, str, str]  # (namespace, kind, name)


@dataclass(frozen=True)
class Contribution:
    """One workload's predicted power, and energy per run and per day, read from the
    annotations the mutating webhook wrote."""

    pod_watts: float
    pod_watts_p90: float
    pods: int
    runs: RunsKind = "none"
    run_joules: float | None = None  # one run (Jobs, CronJobs), when a run's length is known
    run_joules_p90: float | None = None
    runs_per_day: float | None = None  # CronJobs

    def watts(self, checked_value: str) -> float:
        return self.pods * (self.pod_watts_p90 if checked_value == "p90" else self.pod_watts)

    def joules_per_day(self, checked_value: str) -> float | None:
        run_joules = self.run_joules_p90 if checked_value == "p90" else self.run_joules
        return joules_per_day(self.runs, self.watts(checked_value), run_joules, self.runs_per_day)


def _float_or_none(notes: Mapping[str, Any], key: str) -> float | None:
    try:
        value = float(notes[key])
    except (KeyError, TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def pods_of(kind: str, obj: Mapping[str, Any]) -> int:
    """Pods running at once from an admitted object's spec; a malformed count reads as absent
    (the apiserver validated the object, so this is only a guard)."""
    workload = kind_named(kind)
    if workload is None:
        return 1
    counts: Mapping[str, Any] = obj
    for key in workload.count_path:
        counts = counts.get(key) if isinstance(counts.get(key), Mapping) else {}
    return workload.pods_running(**{name: _int_or_none(counts.get(name)) for name in workload.count_fields})


def contribution_of(kind: str, obj: Mapping[str, Any]) -> Contribution | None:
    """None for objects that do not count: unannotated, or owned by a controller."""
    metadata = obj.get("metadata")
    if not isinstance(metadata, Mapping) or has_controller(metadata):
        return None
    notes = metadata.get("annotations")
    if not isinstance(notes, Mapping) or keys.POD_POWER_WATTS not in notes:
        return None
    try:
        pod_watts = float(notes[keys.POD_POWER_WATTS])
        pod_watts_p90 = float(notes.get(keys.POD_POWER_WATTS_P90, pod_watts))
    except (TypeError, ValueError):
        return None
    workload = kind_named(kind)
    run_joules = _float_or_none(notes, keys.ENERGY_JOULES_PER_RUN)
    run_joules_p90 = _float_or_none(notes, keys.ENERGY_JOULES_PER_RUN_P90)
    return Contribution(
        pod_watts, max(pod_watts_p90, pod_watts), pods_of(kind, obj),
        runs="none" if workload is None else workload.runs,
        run_joules=run_joules,
        run_joules_p90=run_joules if run_joules is None or run_joules_p90 is None else max(run_joules_p90, run_joules),
        runs_per_day=_float_or_none(notes, keys.RUNS_PER_DAY),
    )


class WorkloadInventory:
    """Thread-safe state fed by watch events (or directly, in tests of the budget logic)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._workloads: dict[WorkloadKey, Contribution] = {}
        self._namespaces: dict[str, dict[str, str]] = {}
        self._synced_kinds: set[str] = set()
        self.expected_kinds: frozenset[str] = frozenset()

    @property
    def synced(self) -> bool:
        return bool(self.expected_kinds) and self.expected_kinds <= self._synced_kinds

    def mark_synced(self, kind: str) -> None:
        with self._lock:
            self._synced_kinds.add(kind)

    def mark_unsynced(self, kind: str) -> None:
        """The kind's list or watch failed: what it holds may miss changes until the next list."""
        with self._lock:
            self._synced_kinds.discard(kind)

    @property
    def unsynced_kinds(self) -> frozenset[str]:
        with self._lock:
            return self.expected_kinds - self._synced_kinds

    def apply(self, kind: str, event_type: str, obj: Mapping[str, Any]) -> None:
        metadata = obj.get("metadata") if isinstance(obj.get("metadata"), Mapping) else {}
        name = str(metadata.get("name", ""))
        with self._lock:
            if kind == "Namespace":
                if event_type == "DELETED":
                    self._namespaces.pop(name, None)
                else:
                    self._namespaces[name] = _annotations_of(metadata)
                return
            key = (str(metadata.get("namespace", "")), kind, name)
            contribution = None if event_type == "DELETED" else contribution_of(kind, obj)
            if contribution is None:
                self._workloads.pop(key, None)
            else:
                self._workloads[key] = contribution

    def replace(self, kind: str, objects: Iterable[Mapping[str, Any]]) -> None:
        """A fresh list: everything of this kind not in it is gone.

        Built aside and swapped in under one lock: an admission during a re-list after an
        outage must see the old total or the new one, never a namespace half emptied.
        """
        if kind == "Namespace":
            namespaces: dict[str, dict[str, str]] = {}
            for obj in objects:
                metadata = obj.get("metadata") if isinstance(obj.get("metadata"), Mapping) else {}
                namespaces[str(metadata.get("name", ""))] = _annotations_of(metadata)
            with self._lock:
                self._namespaces = namespaces
            return
        fresh: dict[WorkloadKey, Contribution] = {}
        for obj in objects:
            metadata = obj.get("metadata") if isinstance(obj.get("metadata"), Mapping) else {}
            contribution = contribution_of(kind, obj)
            if contribution is not None:
                fresh[(str(metadata.get("namespace", "")), kind, str(metadata.get("name", "")))] = contribution
        with self._lock:
            kept = {k: c for k, c in self._workloads.items() if k[1] != kind}
            self._workloads = kept | fresh

    def namespace_annotations(self, namespace: str) -> dict[str, str]:
        with self._lock:
            return dict(self._namespaces.get(namespace, {}))

    def workload(self, key: WorkloadKey) -> Contribution | None:
        with self._lock:
            return self._workloads.get(key)

    def namespace_total(self, namespace: str, checked_value: str, excluding: WorkloadKey | None = None) -> float:
        with self._lock:
            return sum(
                c.watts(checked_value) for k, c in self._workloads.items() if k[0] == namespace and k != excluding
            )

    def namespace_joules_per_day(self, namespace: str, checked_value: str, excluding: WorkloadKey | None = None) -> float:
        """The namespace's energy per day, J; CronJobs whose energy per run is unknown count 0."""
        with self._lock:
            daily = [c.joules_per_day(checked_value) for k, c in self._workloads.items()
                     if k[0] == namespace and k != excluding]
        return sum(d for d in daily if d is not None)

    def snapshot(self) -> tuple[dict[str, dict[str, str]], dict[WorkloadKey, Contribution]]:
        """Every namespace's annotations and every counted workload, copied under one lock, so
        that the metrics scraped at one moment add up (``webhook.http.metrics``)."""
        with self._lock:
            return {name: dict(notes) for name, notes in self._namespaces.items()}, dict(self._workloads)


def _annotations_of(metadata: Mapping[str, Any]) -> dict[str, str]:
    raw = metadata.get("annotations") or {}
    return {str(k): str(v) for k, v in raw.items()} if isinstance(raw, Mapping) else {}


@dataclass
class Backoff:
    """Capped exponential backoff with jitter, reset by a success.

    The jitter keeps the webhook's replicas (and its kinds' threads) from re-listing in
    step against an apiserver that has just come back.
    """

    initial_seconds: float = 0.25
    max_seconds: float = 5.0
    _next: float = 0.0

    def reset(self) -> None:
        self._next = 0.0

    def next_delay(self) -> float:
        self._next = self.initial_seconds if self._next == 0.0 else min(self._next * 2, self.max_seconds)
        return self._next / 2 + random.uniform(0.0, self._next / 2)


def _watched_kinds() -> dict[str, tuple[type, str]]:
    """kind -> (API class, method listing it in every namespace): namespaces, then workloads."""
    from kubernetes import client

    from webhook.kube import WORKLOAD_ENDPOINTS

    return {"Namespace": (client.CoreV1Api, "list_namespace")} | {
        e.kind: (e.api_class, e.list_all) for e in WORKLOAD_ENDPOINTS
    }


class InventoryWatcher:
    """One thread per kind: list, then watch from the list's resourceVersion.

    - 410 Gone (the resourceVersion is older than the apiserver keeps, as after a restart):
      re-list at once.
    - A watch that ends (``timeoutSeconds`` reached, the apiserver closing it): watch again
      from the last resourceVersion seen; nothing was missed.
    - A list or watch that fails (connection refused or reset, a timeout, a 5xx while etcd
      is away): the kind is unsynced until a list succeeds, retried with backoff.
    """

    def __init__(self, inventory: WorkloadInventory, api_client: Any, watch_timeout_seconds: int = 300,
                 list_timeout_seconds: float = 15.0, backoff_initial_seconds: float = 0.25,
                 backoff_max_seconds: float = 5.0, silent_watch_margin_seconds: float = 10.0) -> None:
        self.inventory = inventory
        self.api_client = api_client
        self.watch_timeout_seconds = watch_timeout_seconds
        # A watch stream silent this long past its timeoutSeconds is dead (a half-open
        # connection, an apiserver that hung): the read times out and the kind re-lists.
        self.silent_watch_margin_seconds = silent_watch_margin_seconds
        self.list_timeout_seconds = list_timeout_seconds
        self.backoff_initial_seconds = backoff_initial_seconds
        self.backoff_max_seconds = backoff_max_seconds
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        # Each thread's open watch: stop() must close it, since a thread blocked reading a
        # quiet stream would otherwise not see the stop event until the stream times out.
        self._watches: dict[str, Any] = {}
        self._kinds = _watched_kinds()
        inventory.expected_kinds = frozenset(self._kinds)

    def start(self) -> None:
        for kind in self._kinds:
            thread = threading.Thread(target=self._run, args=(kind,), name=f"inventory-{kind}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 2.0) -> None:
        """Stop every thread within ``timeout`` seconds in all (they are daemons beyond that)."""
        self._stop.set()
        for watch in list(self._watches.values()):
            watch.stop()  # shuts the socket down, which unblocks the read
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _list_function(self, kind: str) -> Callable[..., Any]:
        api_class, method = self._kinds[kind]
        return getattr(api_class(self.api_client), method)

    def _list(self, kind: str, list_function: Callable[..., Any]) -> str:
        """List ``kind`` into the inventory; its resourceVersion, to watch from."""
        # Raw JSON: the typed models cost far more to build than the few fields we read.
        # A bounded wait: with etcd away the apiserver may hold a list for long.
        response = list_function(_preload_content=False, _request_timeout=self.list_timeout_seconds)
        listing = json.loads(response.data)
        self.inventory.replace(kind, listing.get("items") or [])
        self.inventory.mark_synced(kind)
        return str(listing["metadata"]["resourceVersion"])

    def _watch(self, kind: str, list_function: Callable[..., Any], resource_version: str) -> str:
        """One watch from ``resource_version`` until it ends; the last resourceVersion seen."""
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        watcher = watch.Watch()
        self._watches[kind] = watcher
        for event in watcher.stream(
            list_function,
            resource_version=resource_version,
            # The apiserver ends the watch after this, so a watch lost without a word
            # (a dropped connection nobody reset) is noticed within it...
            timeout_seconds=self.watch_timeout_seconds,
            allow_watch_bookmarks=True,
            # ...and the read timeout catches a stream that goes silent past it.
            _request_timeout=(self.list_timeout_seconds,
                              self.watch_timeout_seconds + self.silent_watch_margin_seconds),
        ):
            if self._stop.is_set():
                watcher.stop()
                break
            raw = event.get("raw_object") or {}
            resource_version = (raw.get("metadata") or {}).get("resourceVersion", resource_version)
            if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                self.inventory.apply(kind, event["type"], raw)
            elif event["type"] == "ERROR":
                raise ApiException(status=raw.get("code", 500), reason=raw.get("message"))
        return resource_version

    def _run(self, kind: str) -> None:
        from kubernetes.client.exceptions import ApiException

        list_function = self._list_function(kind)
        backoff = Backoff(self.backoff_initial_seconds, self.backoff_max_seconds)
        while not self._stop.is_set():
            try:
                resource_version = self._list(kind, list_function)
                backoff.reset()
                while not self._stop.is_set():
                    resource_version = self._watch(kind, list_function, resource_version)
            except ApiException as exc:
                if exc.status == 410:  # our resourceVersion is too old: re-listing is the cure
                    log.info("inventory %s: resourceVersion too old (410 Gone); relisting", kind)
                    continue
                self._failed(kind, f"{exc.status} {exc.reason}", backoff)
            except Exception as exc:  # the API may be unreachable for a while; keep trying
                self._failed(kind, f"{type(exc).__name__}: {exc}", backoff)

    def _failed(self, kind: str, problem: str, backoff: Backoff) -> None:
        # Events may be missed from now until a list succeeds: budgets of this kind's
        # namespaces follow whenInventoryNotSynced meanwhile.
        was_synced = kind not in self.inventory.unsynced_kinds
        self.inventory.mark_unsynced(kind)
        delay = backoff.next_delay()
        (log.warning if was_synced else log.info)("inventory %s: %s; unsynced, retrying in %.1f s", kind, problem, delay)
        self._stop.wait(delay)
