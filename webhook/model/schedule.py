"""How many times a day a CronJob runs, from its ``schedule`` and ``timeZone``.

The schedule is read in Kubernetes' own cron dialect, which is robfig/cron v3's
``ParseStandard`` as the apiserver calls it (k8s.io/kubernetes pkg/apis/batch/validation):

- exactly 5 fields (minute, hour, day of month, month, day of week), each a comma list of
  ``*``, ``?``, a number or a name, a ``low-high`` range, with an optional ``/step``; ``N/step``
  means ``N-max/step``; month names ``jan``..``dec`` and day names ``sun``..``sat`` in any case;
  day of week is 0-6 (``7`` is refused, unlike Vixie cron); no ``L``, ``W``, ``#`` or ``H``;
- descriptors ``@yearly``, ``@annually``, ``@monthly``, ``@weekly``, ``@daily``, ``@midnight``,
  ``@hourly``, and ``@every <Go duration>`` (the apiserver v1.37 accepts it, and the controller
  runs it every that long; under a second counts as one second, as robfig rounds it);
- a ``TZ=``/``CRON_TZ=`` prefix is refused when ``timeZone`` is set (new objects may not use it
  at all; stored ones may still carry it, so without ``timeZone`` it is read as the zone).

croniter expands each field (names, ranges, steps); this module adds the dialect's rules that
croniter does not share (it allows ``7``, ``L``, reversed ranges, and turns a full range into
``*``, which would change how day of month and day of week combine).

Runs per day is exact, not sampled: the runs on a matching day (minutes x hours) times the
share of days that match, counted over the 400-year Gregorian cycle (146,097 days, a whole
number of weeks), so ``0 0 1 * *`` is 12 x 400 / 146,097 a day and a re-applied object gets the
same figure at any time. Day of month and day of week combine as robfig does: both must match
when either field starts with ``*`` or ``?``, either may match otherwise. The count is in the
schedule's own wall-clock time; a daylight-saving change adds or drops one hour's runs twice a
year, which is left out (at most 2 hours' runs a year). So ``timeZone`` is validated but does
not change the rate.
"""

from __future__ import annotations

import functools
import re
import zoneinfo
from dataclasses import dataclass

import numpy as np
from croniter import croniter
from croniter.croniter import CroniterError

SECONDS_PER_DAY = 86_400.0
_CYCLE_START, _CYCLE_END = "2000-01-01", "2400-01-01"  # one whole Gregorian cycle: 146,097 days

# (name, lowest, highest, names allowed) per field, as robfig bounds them.
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, {m: i + 1 for i, m in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"))}),
    ("day of week", 0, 6, {d: i for i, d in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}),
)
_DESCRIPTORS: dict[str, str] = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_EVERY = "@every "
# Go's time.ParseDuration: a sequence of decimal numbers, each with a unit.
_GO_DURATION = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|µs|μs|ms|s|m|h)")
_GO_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
# The apiserver's check of each timeZone component (IANA naming rules, legacy names tolerated).
_ZONE_COMPONENT = re.compile(r"^[A-Za-z.\-_0-9+]{1,14}$")


class ScheduleError(ValueError):
    """The schedule or time zone is not valid; ``field`` is the manifest field that says so."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


@dataclass(frozen=True)
class ScheduleRate:
    """A CronJob's runs per day, or why it has none (``problem`` names the field)."""

    runs_per_day: float | None
    problem: str | None = None


def _go_duration_seconds(text: str) -> float:
    """Seconds in a Go duration string (``1h30m``, ``90s``, ``-5m``), as time.ParseDuration reads it."""
    body = text.lstrip("+-")
    if body in ("0",):
        return 0.0
    if not body:
        raise ValueError(f"time: invalid duration {text!r}")
    total, position = 0.0, 0
    for match in _GO_DURATION.finditer(body):
        if match.start() != position or match.group(1) in ("", "."):
            raise ValueError(f"time: invalid duration {text!r}")
        total += float(match.group(1)) * _GO_UNIT_SECONDS[match.group(2)]
        position = match.end()
    if position != len(body):
        raise ValueError(f"time: invalid duration {text!r}")
    return -total if text.startswith("-") else total


def _endpoint(text: str, low: int, high: int, names: dict[str, int], expr: str) -> int:
    value = names.get(text.lower()) if names else None
    if value is None:
        if not text.isdigit():
            raise ValueError(f"failed to parse int from {text}: {expr}")
        value = int(text)
    if value < low:
        raise ValueError(f"beginning of range ({value}) below minimum ({low}): {expr}")
    if value > high:
        raise ValueError(f"end of range ({value}) above maximum ({high}): {expr}")
    return value


def _check_field(field: str, low: int, high: int, names: dict[str, int]) -> bool:
    """Check one field against robfig's grammar; True when it is a star field (``*`` or ``?``)."""
    star = False
    for expr in field.split(","):
        range_and_step = expr.split("/")
        if len(range_and_step) > 2:
            raise ValueError(f"too many slashes: {expr}")
        low_and_high = range_and_step[0].split("-")
        if len(low_and_high) > 2:
            raise ValueError(f"too many hyphens: {expr}")
        if low_and_high[0] in ("*", "?"):
            if len(low_and_high) > 1:
                raise ValueError(f"failed to parse int from {range_and_step[0]}: {expr}")
            star = star or len(range_and_step) == 1 or range_and_step[1] == "1"
        else:
            start = _endpoint(low_and_high[0], low, high, names, expr)
            end = _endpoint(low_and_high[1], low, high, names, expr) if len(low_and_high) == 2 else start
            if start > end:
                raise ValueError(f"beginning of range ({start}) beyond end of range ({end}): {expr}")
        if len(range_and_step) == 2 and (not range_and_step[1].isdigit() or int(range_and_step[1]) == 0):
            raise ValueError(f"step of range should be a positive number: {expr}")
    return star


@functools.cache
def _days_by_month_dom_dow() -> np.ndarray:
    """How many days of the 400-year cycle fall on each (month, day of month, day of week)."""
    days = np.arange(_CYCLE_START, _CYCLE_END, dtype="datetime64[D]")
    months = days.astype("datetime64[M]")
    month = months.astype(np.int64) % 12
    dom = (days - months).astype(np.int64)
    dow = (days.astype(np.int64) + 4) % 7  # 1970-01-01 was a Thursday; Sunday is 0
    counts = np.zeros((12, 31, 7), dtype=np.int64)
    np.add.at(counts, (month, dom, dow), 1)
    return counts


def _mask(values: list[object], low: int, high: int) -> np.ndarray:
    mask = np.zeros(high - low + 1, dtype=bool)
    if values == ["*"]:
        mask[:] = True
    else:
        mask[[int(v) - low for v in values]] = True  # type: ignore[call-overload]
    return mask


def _five_field_rate(expression: str) -> float:
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"expected exactly 5 fields, found {len(fields)}: {fields}")
    stars = [_check_field(f, low, high, names) for f, (_, low, high, names) in zip(fields, _FIELDS)]
    # robfig treats ? as *; croniter allows it in the day fields only.
    expanded, _ = croniter.expand(" ".join(f.replace("?", "*") for f in fields))
    minutes, hours, doms, months, dows = (
        _mask(values, low, high) for values, (_, low, high, _n) in zip(expanded, _FIELDS)
    )
    counts = _days_by_month_dom_dow()
    if stars[2] or stars[4]:
        days = months[:, None, None] & doms[None, :, None] & dows[None, None, :]
    else:
        days = months[:, None, None] & (doms[None, :, None] | dows[None, None, :])
    day_share = counts[days].sum() / counts.sum()
    return float(minutes.sum() * hours.sum() * day_share)


def _check_time_zone(name: str) -> None:
    field = "spec.timeZone"
    if not name:
        raise ScheduleError(field, "timeZone must be nil or non-empty string")
    if any(p in (".", "..") or p.startswith("-") or not _ZONE_COMPONENT.match(p) for p in name.split("/")):
        raise ScheduleError(field, f"unknown time zone {name}")
    if name.lower() == "local":
        raise ScheduleError(field, "timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones")
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(field, f"unknown time zone {name}") from None


def _rate(schedule: str, time_zone: str | None) -> float:
    """Runs per day of a valid schedule; ScheduleError names the field otherwise."""
    field = "spec.schedule"
    if time_zone is not None:
        _check_time_zone(time_zone)
    spec = schedule.strip()
    if not spec:
        raise ScheduleError(field, "Required value")
    if spec.startswith(("TZ=", "CRON_TZ=")):
        if time_zone is not None:
            raise ScheduleError(field, "cannot use both timeZone field and TZ or CRON_TZ in schedule")
        zone, _, spec = spec.partition("=")[2].partition(" ")
        try:
            zoneinfo.ZoneInfo(zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ScheduleError(field, f"provided bad location {zone}") from None
        spec = spec.strip()
    try:
        if spec.startswith(_EVERY):
            # robfig.Every: under a second is a second, and fractions of a second are dropped.
            seconds = max(1.0, float(int(_go_duration_seconds(spec[len(_EVERY):].strip()))))
            return SECONDS_PER_DAY / seconds
        if spec.startswith("@"):
            if spec not in _DESCRIPTORS:
                raise ValueError(f"unrecognized descriptor: {spec}")
            return _five_field_rate(_DESCRIPTORS[spec])
        return _five_field_rate(spec)
    except (ValueError, CroniterError) as exc:
        raise ScheduleError(field, f"{schedule!r}: {exc}") from None


@functools.lru_cache(maxsize=1024)
def runs_per_day(schedule: str | None, time_zone: str | None, suspend: bool | None) -> ScheduleRate:
    """A CronJob's runs per day; a suspended one runs 0 times (its schedule is still checked).

    Memoised: a schedule's reviews repeat, and the first count costs a few hundred microseconds
    (the day table, built once, about 20 ms).
    """
    try:
        rate = _rate(schedule or "", time_zone)
    except ScheduleError as exc:
        return ScheduleRate(None, str(exc))
    return ScheduleRate(0.0 if suspend else rate)
