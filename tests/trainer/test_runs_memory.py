"""`train runs` reads Kepler's raw samples of Job pods a batch of pods at a time, and keeps only
each pod's lifetime energy from a batch: its memory follows a batch, not the cluster's runs
(`trainer.runs.read_pod_lifetime_energy`). A fake client stands for Prometheus."""

from __future__ import annotations

import gc
import re
import weakref
import pytest

from trainer import runs
from trainer.kepler import KeplerLine, PodEnergySelection, build_energy_query
from trainer.prometheus import RangeSeries
from trainer.runs import PodEnergy, lifetime_joules, read_pod_lifetime_energy

NAMESPACE = "batch"
QUERY = build_energy_query(KeplerLine.POD_COUNTERS, 60, pod_selection=PodEnergySelection(states=None))


def _samples(pod_number: int) -> list[tuple[float, float]]:
    """A counter with a reset: 10, 30, 5 (reset), 25 for pod 0; scaled by the pod's number."""
    scale = pod_number + 1
    return [(1000.0 + 60 * i, value * scale) for i, value in enumerate([10.0, 30.0, 5.0, 25.0])]


class SampleServer:
    """Answers `raw_samples` for the pods a selector names: a running series each, and a
    terminated one for even pods. Each batch's series are watched through weak references."""

    def __init__(self) -> None:
        self.batches: list[list[weakref.ref[RangeSeries]]] = []
        self.alive_from_earlier_batches: list[int] = []

    def raw_samples(self, selector: str, start_seconds: float, end_seconds: float,
                    chunk_seconds: float) -> list[RangeSeries]:
        gc.collect()
        self.alive_from_earlier_batches.append(sum(ref() is not None for batch in self.batches for ref in batch))
        names = re.search(rf'{QUERY.pod_label}=~"([^"]*)"', selector).group(1)  # regex-escaped names
        answer: list[RangeSeries] = []
        for number in sorted(int(n) for n in re.findall(r"pod\W*(\d+)", names)):
            pod = f"pod-{number}"
            labels = {QUERY.namespace_label: NAMESPACE, QUERY.pod_label: pod, "zone": "package"}
            answer.append(RangeSeries(labels={**labels, "state": "running"}, points=tuple(_samples(number)[:3])))
            if number % 2 == 0:
                answer.append(RangeSeries(labels={**labels, "state": "terminated"}, points=tuple(_samples(number)[3:])))
        self.batches.append([weakref.ref(series) for series in answer])
        return answer


def _lives(count: int) -> dict[tuple[str, str], tuple[float, float]]:
    return {(NAMESPACE, f"pod-{n}"): (1000.0 + n, 1200.0 + n) for n in range(count)}


@pytest.mark.parametrize("pods", [5, 23])
def test_a_batch_samples_are_released_before_the_next_batch_is_read(monkeypatch: pytest.MonkeyPatch, pods: int) -> None:
    monkeypatch.setattr(runs, "PODS_PER_ENERGY_READ", 4)
    server = SampleServer()
    energy = read_pod_lifetime_energy(server, QUERY, _lives(pods), 3600.0)  # type: ignore[arg-type]
    assert len(server.batches) == -(-pods // 4)
    # No series of an earlier batch is alive when the next batch is asked for.
    assert server.alive_from_earlier_batches == [0] * len(server.batches)
    assert set(energy) == {(NAMESPACE, f"pod-{n}") for n in range(pods)}


def test_every_pod_gets_its_lifetime_joules_whatever_the_batch() -> None:
    pods = 9

    def expected(number: int) -> PodEnergy:
        values = [v for _, v in _samples(number)] if number % 2 == 0 else [v for _, v in _samples(number)[:3]]
        return PodEnergy(lifetime_joules(values), number % 2 == 0)

    answers: list[dict[tuple[str, str], PodEnergy]] = []
    for batch in (1, 2, 4, 100):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(runs, "PODS_PER_ENERGY_READ", batch)
            answers.append(read_pod_lifetime_energy(SampleServer(), QUERY, _lives(pods), 3600.0))  # type: ignore[arg-type]
    want = {(NAMESPACE, f"pod-{n}"): expected(n) for n in range(pods)}
    # The running series' samples and the terminated sample are one counter: 10, 30, 5 (reset), 25
    # counts 10 + 20 + 5 + 20 = 55 J for pod 0; an odd pod without its terminated sample, 35 J.
    assert want[(NAMESPACE, "pod-0")] == PodEnergy(55.0, True)
    assert want[(NAMESPACE, "pod-1")] == PodEnergy(70.0, False)
    for answer in answers:
        assert answer == want


def test_pods_outside_the_batch_are_not_counted() -> None:
    class Extra(SampleServer):
        def raw_samples(self, selector: str, start_seconds: float, end_seconds: float,
                        chunk_seconds: float) -> list[RangeSeries]:
            stray = RangeSeries(labels={QUERY.namespace_label: NAMESPACE, QUERY.pod_label: "pod-99",
                                        "state": "running"}, points=((1000.0, 1.0), (1060.0, 2.0)))
            return [*super().raw_samples(selector, start_seconds, end_seconds, chunk_seconds), stray]

    energy = read_pod_lifetime_energy(Extra(), QUERY, _lives(3), 3600.0)  # type: ignore[arg-type]
    assert (NAMESPACE, "pod-99") not in energy
    assert len(energy) == 3

