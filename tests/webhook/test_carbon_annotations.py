"""Carbon at apply time: the mutating webhook's carbon annotations, only where the grid is known."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from webhook.admission import annotations as keys
from webhook.admission.mutate import MutationSettings, mutate
from webhook.admission.review import parse_review
from webhook.cli import main
from webhook.model.carbon import REGION_LABEL, CarbonSettings, custom_intensity, grid_intensity
from webhook.model.prior import PriorPredictor
from webhook.model.service import PredictionService

from .reviews import apply, review


@pytest.fixture
def service() -> PredictionService:
    service = PredictionService(PriorPredictor())
    service.load()
    return service


def _deployment(region: str | None = None) -> dict[str, Any]:
    pod: dict[str, Any] = {"containers": [{"name": "app", "resources": {"requests": {"cpu": "2", "memory": "1Gi"}}}]}
    if region:
        pod["nodeSelector"] = {REGION_LABEL: region}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"replicas": 3, "template": {"spec": pod}}}


def _cronjob(deadline: int) -> dict[str, Any]:
    job = {"activeDeadlineSeconds": deadline, "template": {"spec": {"restartPolicy": "Never", "containers": [
        {"name": "batch", "resources": {"requests": {"cpu": "4"}}}]}}}
    return {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "nightly", "namespace": "batch"},
            "spec": {"schedule": "0 */6 * * *", "jobTemplate": {"spec": job}}}


def _annotations(service: PredictionService, obj: dict[str, Any], settings: MutationSettings,
                 **request: Any) -> dict[str, str]:
    answer = mutate(parse_review(review(obj, **request)), service, settings).review
    assert answer["response"]["allowed"] is True
    return apply(obj, answer)["metadata"].get("annotations", {})


def test_a_configured_region_adds_grams_per_hour(service: PredictionService) -> None:
    grid = grid_intensity("europe-west4")
    notes = _annotations(service, _deployment(), MutationSettings(carbon=CarbonSettings(default=grid, pue=1.1)))
    joules_per_hour = float(notes[keys.ENERGY_JOULES_PER_HOUR])
    expected = joules_per_hour / 3.6e6 * 1.1 * grid.grams_per_kwh
    assert float(notes[keys.CARBON_GRAMS_PER_HOUR]) == pytest.approx(expected, abs=0.002)
    assert notes[keys.CARBON_GRID] == f"europe-west4@{grid.grams_per_kwh:.3f}"
    # A Deployment has no runs: no per-run or per-day carbon.
    assert keys.CARBON_GRAMS_PER_RUN not in notes and keys.CARBON_GRAMS_PER_DAY not in notes


def test_the_pods_region_node_selector_beats_the_flag_and_nothing_is_guessed(service: PredictionService) -> None:
    flag = MutationSettings(carbon=CarbonSettings(default=custom_intensity(1000.0)))
    pinned = _annotations(service, _deployment("eu-north-1"), flag)
    assert pinned[keys.CARBON_GRID].startswith("eu-north-1@")
    joules_per_hour = float(pinned[keys.ENERGY_JOULES_PER_HOUR])
    sweden = grid_intensity("eu-north-1").grams_per_kwh
    assert float(pinned[keys.CARBON_GRAMS_PER_HOUR]) == pytest.approx(joules_per_hour / 3.6e6 * sweden, abs=0.002)
    # No flag and no selector: no carbon annotation; an earlier (or forged) one is removed.
    forged = _deployment()
    forged["metadata"]["annotations"] = {keys.CARBON_GRAMS_PER_HOUR: "1.000", keys.CARBON_GRID: "moon@1.000"}
    notes = _annotations(service, forged, MutationSettings())
    assert not any(key in notes for key in keys.CARBON_KEYS)
    assert keys.WORKLOAD_POWER_WATTS in notes
    # A selector naming no region the dataset knows is not a region: still nothing.
    assert not any(key in _annotations(service, _deployment("rack-7"), MutationSettings()) for key in keys.CARBON_KEYS)


def test_a_cronjob_gets_carbon_per_run_and_per_day(service: PredictionService) -> None:
    grid = custom_intensity(400.0)
    notes = _annotations(service, _cronjob(deadline=1800), MutationSettings(carbon=CarbonSettings(default=grid)))
    per_run = float(notes[keys.ENERGY_JOULES_PER_RUN]) / 3.6e6 * 400
    per_day = float(notes[keys.ENERGY_JOULES_PER_DAY]) / 3.6e6 * 400
    assert float(notes[keys.CARBON_GRAMS_PER_RUN]) == pytest.approx(per_run, abs=0.002)
    assert float(notes[keys.CARBON_GRAMS_PER_DAY]) == pytest.approx(per_day, abs=0.002)
    assert float(notes[keys.CARBON_GRAMS_PER_DAY]) == pytest.approx(4 * float(notes[keys.CARBON_GRAMS_PER_RUN]), abs=0.01)


def test_serve_rejects_an_unknown_region_before_starting(tmp_path: Any) -> None:
    result = CliRunner().invoke(main, ["serve", "--cert-dir", str(tmp_path), "--carbon-region", "atlantis"])
    assert result.exit_code == 2 and "energetiscope regions" in result.output
    both = CliRunner().invoke(main, ["serve", "--cert-dir", str(tmp_path), "--carbon-region", "eastus",
                                     "--grid-intensity", "100"])
    assert both.exit_code == 2 and "--carbon-region or --grid-intensity" in both.output
