"""Grid carbon intensity: the vendored codecarbon files, every region resolving, the pod's region."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from webhook.cli import main
from webhook.model import carbon
from webhook.model.carbon import CarbonSettings, UnknownRegion, custom_intensity, grid_intensity, pod_region

DATA = Path(carbon.__file__).resolve().parent / "data" / "codecarbon"
# The sha256 of each file in codecarbon 3.3.2's wheel (SOURCE.md): a refresh is a deliberate change.
SHA256 = {
    "impact.csv": "15a674368b3fe9e0258008d28ed903ac6147b1f243053d0f5d4905183f7d05b2",
    "global_energy_mix.json": "8f1053800210aa07cc6019cc422b0d34f47dd092f6351dd873445c2b8199a107",
    "usa_emissions.json": "cb17a01fb1e5571fb9cf79edff093a69ad5ca32a01ef01e4db67de1fbed34318",
    "LICENSE": "6a2e9da66edcf61aaf09922bdee5d9eacc7d85c781e96ad4bccccdd2ec4b046e",
}


def test_the_data_files_are_codecarbons_unchanged() -> None:
    for name, digest in SHA256.items():
        assert hashlib.sha256((DATA / name).read_bytes()).hexdigest() == digest, name
        assert digest in (DATA / "SOURCE.md").read_text(encoding="utf-8"), name
    assert carbon.CODECARBON_VERSION in (DATA / "SOURCE.md").read_text(encoding="utf-8")


def test_each_kind_of_region_reads_its_file() -> None:
    mix = json.loads((DATA / "global_energy_mix.json").read_text(encoding="utf-8"))
    germany = grid_intensity("DEU")
    assert (germany.grams_per_kwh, germany.year) == (mix["DEU"]["carbon_intensity"], mix["DEU"]["year"])
    assert grid_intensity("deu").grams_per_kwh == germany.grams_per_kwh  # case-insensitive
    assert grid_intensity("eu-central-1").grams_per_kwh == germany.grams_per_kwh  # AWS Frankfurt
    assert grid_intensity("westeurope").grams_per_kwh == mix["NLD"]["carbon_intensity"]  # Azure Netherlands
    assert grid_intensity("europe-west4").grams_per_kwh == 236.0 and grid_intensity("europe-west4").provider == "gcp"
    egrid = json.loads((DATA / "usa_emissions.json").read_text(encoding="utf-8"))
    oregon = next(r for r in egrid.values() if isinstance(r, dict) and r.get("regionCode") == "OR")
    assert grid_intensity("us-west-2").grams_per_kwh == pytest.approx(oregon["emissions"] * 453.59237 / 1000)
    assert grid_intensity("us-west-2").year == 2023


def test_every_listed_region_resolves_and_the_command_lists_them() -> None:
    listed = json.loads(CliRunner().invoke(main, ["regions", "-o", "json"]).stdout)
    names = {r["region"] for r in listed}
    assert {"us-east-1", "eastus", "europe-west4", "me-central1", "DEU"} <= names
    for region in carbon._AWS.keys() | carbon._AZURE.keys():
        assert grid_intensity(region).grams_per_kwh > 0, region
    assert all(r["grams_per_kwh"] >= 0 and r["source"] for r in listed)


def test_unknown_regions_say_how_to_find_valid_ones() -> None:
    with pytest.raises(UnknownRegion, match="energetiscope regions"):
        grid_intensity("mars-north-1")
    with pytest.raises(UnknownRegion, match=r"three-letter ISO code \(DEU, not DE\)"):
        grid_intensity("DE")
    with pytest.raises(ValueError):
        custom_intensity(float("nan"))


def test_the_pods_region_comes_from_its_node_selector_only() -> None:
    def cronjob(selector: dict[str, str], affinity: bool = False) -> dict[str, object]:
        pod: dict[str, object] = {"containers": [{"name": "c"}], "nodeSelector": selector}
        if affinity:
            pod["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": carbon.REGION_LABEL, "operator": "In", "values": ["eu-west-1"]}]}]}}}
        return {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "c"},
                "spec": {"schedule": "@daily", "jobTemplate": {"spec": {"template": {"spec": pod}}}}}

    assert pod_region(cronjob({carbon.REGION_LABEL: "eu-north-1"})) == "eu-north-1"
    assert pod_region(cronjob({}, affinity=True)) is None
    settings = CarbonSettings(default=grid_intensity("us-east-1"))
    assert settings.for_object(cronjob({carbon.REGION_LABEL: "eu-north-1"})).region == "eu-north-1"
    # A site-specific label value is not a region the dataset knows: the configured grid applies.
    assert settings.for_object(cronjob({carbon.REGION_LABEL: "rack-7"})).region == "us-east-1"
    assert CarbonSettings().for_object(cronjob({})) is None
    with pytest.raises(ValueError):
        CarbonSettings(pue=0.5)
