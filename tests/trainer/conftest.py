"""Fixtures for the trainer's tests against a real Prometheus (Debian's prometheus + promtool).

`kepler_prometheus` is one server for the whole session (backfill and start take seconds on a
shared machine). It holds two datasets in disjoint time ranges: the seed measurements as Kepler
0.7 counters, ending two hours ago, and a small Kepler 0.10 dataset ending ten hours ago, each
with its kube-state-metrics owner series.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.trainer.kepler_datasets import (
    SEED_LABELS_PATH,
    BackfillDataset,
    seed_container_dataset,
    synthetic_pod_dataset,
)
from harness.prometheus import PrometheusBinaries, PrometheusBinariesMissing, PrometheusHarness

SKIP_VARIABLE = "ENERGETISCOPE_SKIP_PROMETHEUS"


@dataclass(frozen=True)
class KeplerPrometheus:
    url: str
    seed: BackfillDataset  # Kepler 0.7 counters from the seed measurements
    pods: BackfillDataset  # Kepler 0.10 pod counters, synthetic


def locate_binaries_or_fail() -> PrometheusBinaries:
    """The binaries; missing ones fail the test unless skipping was asked for, so a machine
    without Prometheus cannot report a green run that never queried one."""
    try:
        return PrometheusBinaries.locate()
    except PrometheusBinariesMissing as error:
        problem = str(error)
    if os.environ.get(SKIP_VARIABLE) == "1":
        pytest.skip(f"{SKIP_VARIABLE}=1 and {problem}")
    pytest.fail(f"{problem} (or set {SKIP_VARIABLE}=1 to skip the Prometheus tests)", pytrace=False)


@pytest.fixture(scope="session")
def seed_labels_path() -> Path:
    if not SEED_LABELS_PATH.is_file():
        pytest.fail(f"seed measurements not found at {SEED_LABELS_PATH} (shared/ must sit beside the repository)", pytrace=False)
    return SEED_LABELS_PATH


@pytest.fixture(scope="session")
def kepler_prometheus(
    tmp_path_factory: pytest.TempPathFactory, seed_labels_path: Path
) -> Iterator[KeplerPrometheus]:
    binaries = locate_binaries_or_fail()
    now = time.time()
    seed = seed_container_dataset(seed_labels_path, last_sample_before_seconds=now - 2 * 3600)
    pods = synthetic_pod_dataset(last_sample_before_seconds=now - 10 * 3600)
    with PrometheusHarness(tmp_path_factory.mktemp("prometheus"), binaries) as harness:
        harness.backfill(seed.openmetrics, name=seed.name)
        harness.backfill(pods.openmetrics, name=pods.name)
        url = harness.start()
        yield KeplerPrometheus(url=url, seed=seed, pods=pods)
