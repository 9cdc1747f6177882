"""Quantities must match apimachinery exactly, including the forms people rarely write."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, strategies as st

from webhook.model.quantity import QuantityError, cpu_millicores, memory_bytes, memory_mebibytes, parse_quantity


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("500m", Decimal("0.5")),
        ("129M", Decimal(129_000_000)),
        ("128974848", Decimal(128974848)),
        ("1Gi", Decimal(2**30)),
        ("123Mi", Decimal(123 * 2**20)),
        ("2k", Decimal(2000)),
        ("1e3", Decimal(1000)),
        ("1E3", Decimal(1000)),
        ("1.5e-3", Decimal("0.0015")),
        ("1e+3", Decimal(1000)),
        (".5", Decimal("0.5")),
        ("5.", Decimal(5)),
        ("+2", Decimal(2)),
        ("-2", Decimal(-2)),
        ("0", Decimal(0)),
        ("1E", Decimal(10**18)),
        ("1Ei", Decimal(2**60)),
        ("250000n", Decimal("0.00025")),
        ("3u", Decimal("0.000003")),
        ("0.15", Decimal("0.15")),
    ],
)
def test_parses_like_apimachinery(text: str, expected: Decimal) -> None:
    assert parse_quantity(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "1.2.3", "1 Gi", "Gi", ".", "1e", "1ki", "1KiB", "1e1.5", "--1", "1mi", "0x10"])
def test_rejects_what_apimachinery_rejects(text: str) -> None:
    with pytest.raises(QuantityError):
        parse_quantity(text)


def test_error_names_the_field() -> None:
    with pytest.raises(QuantityError, match=r"spec.containers\[0\].resources.requests.cpu: 'abc' is not a valid quantity"):
        cpu_millicores("abc", "spec.containers[0].resources.requests.cpu")


def test_cpu_and_memory_units() -> None:
    assert cpu_millicores("500m") == 500
    assert cpu_millicores(2) == 2000
    assert cpu_millicores(0.5) == 500
    assert cpu_millicores("0.0001") == 1  # MilliValue rounds up
    assert memory_bytes("500m") == Decimal("0.5")  # half a byte, not 500 MB
    assert memory_mebibytes("1Gi") == 1024.0
    assert memory_mebibytes("129M") == pytest.approx(129e6 / 2**20)


def test_yaml_scalars() -> None:
    assert parse_quantity(1024) == 1024
    assert parse_quantity(1e3) == 1000
    for bad in (True, None, float("nan"), float("inf"), [1]):
        with pytest.raises(QuantityError):
            parse_quantity(bad)


_SUFFIX_SCALE = {
    "": Fraction(1), "n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 1000),
    "k": Fraction(10**3), "M": Fraction(10**6), "G": Fraction(10**9), "T": Fraction(10**12),
    "P": Fraction(10**15), "E": Fraction(10**18),
    "Ki": Fraction(2**10), "Mi": Fraction(2**20), "Gi": Fraction(2**30), "Ti": Fraction(2**40),
    "Pi": Fraction(2**50), "Ei": Fraction(2**60),
}


@st.composite
def quantities(draw: st.DrawFn) -> tuple[str, Fraction]:
    sign = draw(st.sampled_from(["", "+", "-"]))
    integer = draw(st.text("0123456789", max_size=12))
    has_dot = draw(st.booleans())
    fraction = draw(st.text("0123456789", max_size=9)) if has_dot else ""
    if not integer and not fraction:
        integer = "0"
    number = integer + ("." + fraction if has_dot else "")
    value = Fraction(int(integer or "0")) + (Fraction(int(fraction), 10 ** len(fraction)) if fraction else 0)
    if sign == "-":
        value = -value
    if draw(st.booleans()):
        suffix = draw(st.sampled_from(sorted(_SUFFIX_SCALE)))
        return sign + number + suffix, value * _SUFFIX_SCALE[suffix]
    exponent = draw(st.integers(-30, 30))
    letter = draw(st.sampled_from("eE"))
    exponent_text = draw(st.sampled_from(["", "+"])) + str(exponent) if exponent >= 0 else str(exponent)
    return sign + number + letter + exponent_text, value * Fraction(10) ** exponent


@given(quantities())
def test_property_exact_value(case: tuple[str, Fraction]) -> None:
    text, expected = case
    assert Fraction(parse_quantity(text)) == expected


@given(quantities())
def test_property_millicores_round_up(case: tuple[str, Fraction]) -> None:
    text, expected = case
    millis = expected * 1000
    ceiling = -((-millis.numerator) // millis.denominator)
    assert cpu_millicores(text) == ceiling


@given(st.text(max_size=12))
def test_property_never_crashes_otherwise(text: str) -> None:
    try:
        parse_quantity(text)
    except QuantityError as exc:
        assert "quantity" in str(exc)
