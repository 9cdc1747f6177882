"""Grid carbon intensity (g CO2e per kWh) by cloud region or country, offline, from codecarbon's data.

Carbon is energy times the grid's intensity where it is drawn, so a region is all it needs;
``energetiscope diff`` and the webhook's carbon annotation both ask here. The numbers are
codecarbon's (MIT, https://github.com/mlco2/codecarbon), copied byte for byte from its 3.3.2
wheel into ``webhook/model/data/codecarbon`` (``SOURCE.md`` there gives each file's sha256 and
how to refresh them): codecarbon itself pulls some twenty packages (authlib, rich, typer,
nvidia-ml-py, ...) that a TLS webhook should not carry to read three small files, and nothing is
downloaded at run time.

- Google Cloud regions (``europe-west4``): Google's own per-region figures, codecarbon's
  ``cloud/impact.csv``.
- AWS (``us-east-1``) and Azure (``eastus``) regions: codecarbon's data has no rows for them, so
  the table below places each region (a US state, else a country, from the providers' published
  region locations) and the intensity is that place's: EPA eGRID2023 for US states
  (``usa_emissions.json``), else the country's (``global_energy_mix.json``).
- ISO 3166-1 alpha-3 country codes (``DEU``, ``USA``): ``global_energy_mix.json``.

An unknown region is an error that says how to list the known ones (``energetiscope regions``):
a guessed intensity would look as precise as a real one.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import cache
from importlib import resources
from typing import Any

from webhook.model.kinds import workload_kind

DATA_PACKAGE = "webhook.model.data.codecarbon"
CODECARBON_VERSION = "3.3.2"
HOURS_PER_MONTH = 730.0  # Infracost's month: 365 days x 24 h / 12
JOULES_PER_KWH = 3.6e6
GRAMS_PER_POUND = 453.59237  # eGRID publishes lb/MWh; lb/MWh x this / 1000 = g/kWh
REGION_LABEL = "topology.kubernetes.io/region"
FIND_REGIONS = "`energetiscope regions` lists the known regions and countries with their intensity"

# Where each AWS and Azure region's data centres are, as the providers publish it:
# (ISO 3166-1 alpha-3 country, US state code or None, place).
_AWS: dict[str, tuple[str, str | None, str]] = {
    "us-east-1": ("USA", "VA", "N. Virginia"), "us-east-2": ("USA", "OH", "Ohio"),
    "us-west-1": ("USA", "CA", "N. California"), "us-west-2": ("USA", "OR", "Oregon"),
    "ca-central-1": ("CAN", None, "Montreal"), "ca-west-1": ("CAN", None, "Calgary"),
    "mx-central-1": ("MEX", None, "Mexico"), "sa-east-1": ("BRA", None, "Sao Paulo"),
    "eu-central-1": ("DEU", None, "Frankfurt"), "eu-central-2": ("CHE", None, "Zurich"),
    "eu-west-1": ("IRL", None, "Ireland"), "eu-west-2": ("GBR", None, "London"),
    "eu-west-3": ("FRA", None, "Paris"), "eu-south-1": ("ITA", None, "Milan"),
    "eu-south-2": ("ESP", None, "Spain"), "eu-north-1": ("SWE", None, "Stockholm"),
    "il-central-1": ("ISR", None, "Tel Aviv"), "me-south-1": ("BHR", None, "Bahrain"),
    "me-central-1": ("ARE", None, "UAE"), "af-south-1": ("ZAF", None, "Cape Town"),
    "ap-east-1": ("HKG", None, "Hong Kong"), "ap-south-1": ("IND", None, "Mumbai"),
    "ap-south-2": ("IND", None, "Hyderabad"), "ap-northeast-1": ("JPN", None, "Tokyo"),
    "ap-northeast-2": ("KOR", None, "Seoul"), "ap-northeast-3": ("JPN", None, "Osaka"),
    "ap-southeast-1": ("SGP", None, "Singapore"), "ap-southeast-2": ("AUS", None, "Sydney"),
    "ap-southeast-3": ("IDN", None, "Jakarta"), "ap-southeast-4": ("AUS", None, "Melbourne"),
    "ap-southeast-5": ("MYS", None, "Malaysia"), "ap-southeast-7": ("THA", None, "Thailand"),
}
_AZURE: dict[str, tuple[str, str | None, str]] = {
    "eastus": ("USA", "VA", "Virginia"), "eastus2": ("USA", "VA", "Virginia"),
    "centralus": ("USA", "IA", "Iowa"), "northcentralus": ("USA", "IL", "Illinois"),
    "southcentralus": ("USA", "TX", "Texas"), "westcentralus": ("USA", "WY", "Wyoming"),
    "westus": ("USA", "CA", "California"), "westus2": ("USA", "WA", "Washington"),
    "westus3": ("USA", "AZ", "Arizona"),
    "canadacentral": ("CAN", None, "Toronto"), "canadaeast": ("CAN", None, "Quebec City"),
    "brazilsouth": ("BRA", None, "Sao Paulo State"), "mexicocentral": ("MEX", None, "Queretaro"),
    "northeurope": ("IRL", None, "Ireland"), "westeurope": ("NLD", None, "Netherlands"),
    "uksouth": ("GBR", None, "London"), "ukwest": ("GBR", None, "Cardiff"),
    "francecentral": ("FRA", None, "Paris"), "francesouth": ("FRA", None, "Marseille"),
    "germanywestcentral": ("DEU", None, "Frankfurt"), "germanynorth": ("DEU", None, "Berlin"),
    "switzerlandnorth": ("CHE", None, "Zurich"), "switzerlandwest": ("CHE", None, "Geneva"),
    "norwayeast": ("NOR", None, "Oslo"), "norwaywest": ("NOR", None, "Stavanger"),
    "swedencentral": ("SWE", None, "Gavle"), "polandcentral": ("POL", None, "Warsaw"),
    "italynorth": ("ITA", None, "Milan"), "spaincentral": ("ESP", None, "Madrid"),
    "israelcentral": ("ISR", None, "Israel"), "qatarcentral": ("QAT", None, "Doha"),
    "uaenorth": ("ARE", None, "Dubai"), "uaecentral": ("ARE", None, "Abu Dhabi"),
    "southafricanorth": ("ZAF", None, "Johannesburg"), "southafricawest": ("ZAF", None, "Cape Town"),
    "centralindia": ("IND", None, "Pune"), "southindia": ("IND", None, "Chennai"),
    "westindia": ("IND", None, "Mumbai"), "eastasia": ("HKG", None, "Hong Kong"),
    "southeastasia": ("SGP", None, "Singapore"), "japaneast": ("JPN", None, "Tokyo"),
    "japanwest": ("JPN", None, "Osaka"), "koreacentral": ("KOR", None, "Seoul"),
    "koreasouth": ("KOR", None, "Busan"), "australiaeast": ("AUS", None, "New South Wales"),
    "australiasoutheast": ("AUS", None, "Victoria"), "australiacentral": ("AUS", None, "Canberra"),
}
# codecarbon 3.3.2 spells Google's Doha region "me-cenrtal1"; Google's name is "me-central1".
_GCP_SPELLINGS = {"me-central1": "me-cenrtal1"}


class UnknownRegion(ValueError):
    """A region or country the dataset does not hold; the message says how to find valid ones."""


@dataclass(frozen=True)
class GridIntensity:
    """The carbon intensity of the grid one region draws from."""

    region: str  # as asked for: a cloud region, an alpha-3 country code, or "custom"
    grams_per_kwh: float
    provider: str  # "gcp", "aws", "azure", "country" or "custom"
    location: str  # country, and state or city where known
    source: str  # which file of which dataset, or the flag that set it
    year: int | None  # the data's year, when the dataset records it

    def as_dict(self) -> dict[str, Any]:
        return {"region": self.region, "grams_per_kwh": self.grams_per_kwh, "provider": self.provider,
                "location": self.location, "source": self.source, "year": self.year}


def custom_intensity(grams_per_kwh: float) -> GridIntensity:
    """An intensity the user gave (``--grid-intensity``) instead of a region."""
    if not grams_per_kwh >= 0 or grams_per_kwh == float("inf"):
        raise ValueError(f"grid intensity must be a finite number >= 0 g/kWh, got {grams_per_kwh}")
    return GridIntensity("custom", grams_per_kwh, "custom", "", "--grid-intensity", None)


def _data(name: str) -> str:
    # utf-8-sig: impact.csv starts with a byte-order mark.
    return resources.files(DATA_PACKAGE).joinpath(name).read_text(encoding="utf-8-sig")


@cache
def _countries() -> dict[str, GridIntensity]:
    mix: dict[str, dict[str, Any]] = json.loads(_data("global_energy_mix.json"))
    source = f"codecarbon {CODECARBON_VERSION} global_energy_mix.json (Our World in Data electricity mix)"
    return {code: GridIntensity(code, float(row["carbon_intensity"]), "country", str(row.get("country_name", code)),
                                source, row.get("year"))
            for code, row in mix.items() if isinstance(row, Mapping) and row.get("carbon_intensity") is not None}


@cache
def _us_states() -> dict[str, tuple[float, int | None]]:
    """g/kWh by two-letter state code, from eGRID's lb/MWh."""
    egrid: dict[str, Any] = json.loads(_data("usa_emissions.json"))
    year = egrid.get("_source", {}).get("year")
    return {row["regionCode"]: (float(row["emissions"]) * GRAMS_PER_POUND / 1000.0, year)
            for name, row in egrid.items() if not name.startswith("_") and isinstance(row, Mapping)}


def _placed(region: str, provider: str, place: tuple[str, str | None, str]) -> GridIntensity:
    country_code, state, city = place
    if state is not None:
        grams, year = _us_states()[state]
        source = f"codecarbon {CODECARBON_VERSION} usa_emissions.json (EPA eGRID{year}, state {state})"
        return GridIntensity(region, grams, provider, f"USA, {city}", source, year)
    country = _countries()[country_code]
    return GridIntensity(region, country.grams_per_kwh, provider, f"{country.location}, {city}", country.source,
                         country.year)


@cache
def _regions() -> dict[str, GridIntensity]:
    """Every known name, lower-case: cloud regions first, then country codes."""
    known: dict[str, GridIntensity] = {}
    for row in csv.DictReader(io.StringIO(_data("impact.csv"))):
        region = row["region"].strip()
        source = f"codecarbon {CODECARBON_VERSION} cloud/impact.csv ({row['source'].strip()})"
        location = ", ".join(part for part in (row["country_name"].strip(), row["city"].strip()) if part)
        known[region.lower()] = GridIntensity(region, float(row["impact"]), row["provider"].strip(), location, source,
                                              None)
    for spelled, theirs in _GCP_SPELLINGS.items():
        if theirs in known:
            known[spelled] = replace(known[theirs], region=spelled)
    for provider, table in (("aws", _AWS), ("azure", _AZURE)):
        for region, place in table.items():
            known[region] = _placed(region, provider, place)
    for code, country in _countries().items():
        known.setdefault(code.lower(), country)
    return known


def known_regions() -> list[GridIntensity]:
    """Every region and country the dataset holds, cloud regions first (``energetiscope regions``)."""
    order = {"gcp": 0, "aws": 1, "azure": 2, "country": 3}
    return sorted(_regions().values(), key=lambda g: (order.get(g.provider, 9), g.region))


def grid_intensity(region: str) -> GridIntensity:
    """The intensity of a cloud region (``us-east-1``, ``europe-west4``, ``eastus``) or an ISO
    3166-1 alpha-3 country code (``DEU``), case-insensitive."""
    key = region.strip().lower()
    found = _regions().get(key)
    if found is None:
        near = difflib.get_close_matches(key, _regions().keys(), n=3, cutoff=0.75)
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        two_letters = " Countries take their three-letter ISO code (DEU, not DE)." if len(key) == 2 else ""
        raise UnknownRegion(f"unknown region {region!r}{hint}.{two_letters} {FIND_REGIONS}, "
                            "or give --grid-intensity in g CO2e/kWh")
    return found if found.region == region else replace(found, region=region)


def pod_region(obj: Mapping[str, Any]) -> str | None:
    """The region a workload's pods are pinned to by the ``topology.kubernetes.io/region`` node
    selector, or None. Affinity is not read: a list of allowed regions does not say which one."""
    kind = workload_kind(obj.get("kind"), obj.get("apiVersion"))
    if kind is None:
        return None
    spec: Any = obj
    for key in kind.pod_spec_path:
        spec = spec.get(key) if isinstance(spec, Mapping) else None
    selector = spec.get("nodeSelector") if isinstance(spec, Mapping) else None
    region = selector.get(REGION_LABEL) if isinstance(selector, Mapping) else None
    return region if isinstance(region, str) and region else None


@dataclass(frozen=True)
class CarbonSettings:
    """How energy becomes carbon: the grid for workloads that do not name their region, and the PUE.

    ``default`` None means no region is configured: a workload without its own region node
    selector then gets no carbon figure (never a guess).
    """

    default: GridIntensity | None = None
    pue: float = 1.0  # data-centre overhead on the predicted IT energy; 1.0 counts the IT energy alone

    def __post_init__(self) -> None:
        if not 1.0 <= self.pue <= 5.0:
            raise ValueError(f"PUE must be between 1.0 and 5.0, got {self.pue}")

    def for_object(self, obj: Mapping[str, Any]) -> GridIntensity | None:
        """The pod's own region when it names one the dataset knows, else the configured default."""
        region = pod_region(obj)
        if region is not None:
            try:
                return grid_intensity(region)
            except UnknownRegion:
                pass  # a site-specific region label: the cluster's configured grid still applies
        return self.default

    def grams(self, kwh: float, grid: GridIntensity) -> float:
        """g CO2e of ``kwh`` of predicted (IT) energy drawn from ``grid``, with the PUE's overhead."""
        return kwh * self.pue * grid.grams_per_kwh

    def grams_of_joules(self, joules: float, grid: GridIntensity) -> float:
        return self.grams(joules / JOULES_PER_KWH, grid)
