"""Kubernetes resource quantities, parsed the way k8s.io/apimachinery does.

Grammar (apimachinery ``resource.ParseQuantity``)::

    quantity ::= sign? number suffix
    number   ::= digits | digits "." digits | digits "." | "." digits
    suffix   ::= binarySI | decimalSI | ("e" | "E") sign? digits
    binarySI ::= Ki | Mi | Gi | Ti | Pi | Ei
    decimalSI::= n | u | m | "" | k | M | G | T | P | E

Values are kept exact (``Decimal``): ``500m`` memory really is half a byte, ``129M`` is
129,000,000 bytes and ``1Gi`` is 2**30. Conversions round the way apimachinery's
``MilliValue``/``Value`` do: up, away from zero.
"""

from __future__ import annotations

import decimal
import functools
import math
from dataclasses import dataclass
from decimal import Decimal

_DECIMAL_SI_EXPONENTS = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_BINARY_SI_EXPONENTS = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DIGITS = frozenset("0123456789")
# Enough precision that every quantity a manifest can sensibly hold stays exact: 2**60 has 19 digits.
_CONTEXT = decimal.Context(prec=80, Emax=10**9, Emin=-(10**9), rounding=decimal.ROUND_HALF_EVEN)
MIB_BYTES = Decimal(2**20)


class QuantityError(ValueError):
    """A value that is not a Kubernetes quantity. The message names the field when one is known."""


def parse_quantity(value: object, field: str = "quantity") -> Decimal:
    """Return the exact value of a Kubernetes quantity (in base units: cores, bytes, count).

    Accepts the string forms plus the bare YAML numbers (``cpu: 0.5``, ``memory: 1024``)
    that the apiserver also accepts. ``field`` names the field in error messages.
    """
    if isinstance(value, bool) or value is None:
        raise QuantityError(f"{field}: expected a quantity such as '500m' or '1Gi', got {value!r}")
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise QuantityError(f"{field}: {value!r} is not a finite quantity")
        # repr gives the shortest string that round-trips, i.e. what the YAML author wrote.
        return _parse_string(repr(value), field)
    if isinstance(value, str):
        return _parse_string(value, field)
    raise QuantityError(f"{field}: expected a quantity string or number, got {type(value).__name__}")


_MEMO_MAX_CHARS = 32  # only short texts are remembered: a long one could pin megabytes per entry


def _parse_string(text: str, field: str) -> Decimal:
    parsed = _parse_text(text) if len(text) <= _MEMO_MAX_CHARS else _parse_text.__wrapped__(text)
    if isinstance(parsed, _Invalid):
        raise QuantityError(f"{field}: {text!r} is not a valid quantity ({parsed.reason})")
    return parsed


@dataclass(frozen=True)
class _Invalid:
    reason: str


# Manifests repeat a few quantities ("100m", "128Mi") endlessly; Decimals are immutable.
@functools.lru_cache(maxsize=4096)
def _parse_text(text: str) -> Decimal | _Invalid:
    """The exact value of a quantity string, or why it is not one."""
    if not text:
        return _Invalid("empty")
    pos, end = 0, len(text)
    if text[pos] in "+-":
        pos += 1
    integer_start = pos
    while pos < end and text[pos] in _DIGITS:
        pos += 1
    integer_digits = text[integer_start:pos]
    fraction_digits = ""
    if pos < end and text[pos] == ".":
        pos += 1
        fraction_start = pos
        while pos < end and text[pos] in _DIGITS:
            pos += 1
        fraction_digits = text[fraction_start:pos]
    if not integer_digits and not fraction_digits:
        return _Invalid("no digits")
    number = Decimal(f"{text[:integer_start]}{integer_digits or '0'}.{fraction_digits or '0'}")
    suffix = text[pos:]

    if suffix in _BINARY_SI_EXPONENTS:
        return _CONTEXT.multiply(number, Decimal(2 ** _BINARY_SI_EXPONENTS[suffix]))
    if suffix in _DECIMAL_SI_EXPONENTS:
        return _CONTEXT.scaleb(number, _DECIMAL_SI_EXPONENTS[suffix])
    if len(suffix) > 1 and suffix[0] in "eE":
        exponent_text = suffix[1:]
        digits = exponent_text[1:] if exponent_text[0] in "+-" else exponent_text
        if not digits or not set(digits) <= _DIGITS:
            return _Invalid(f"exponent {suffix!r} is not an integer")
        exponent = int(exponent_text)
        # apimachinery parses the exponent as an int32.
        if not -(2**31) <= exponent < 2**31:
            return _Invalid("exponent out of range")
        return _CONTEXT.scaleb(number, exponent)
    return _Invalid(f"unknown suffix {suffix!r}; expected one of n u m k M G T P E Ki Mi Gi Ti Pi Ei or an exponent like e3")


def _ceil(value: Decimal) -> int:
    # Rounds away from zero like apimachinery's ScaledValue; values in manifests are non-negative.
    return int(value.to_integral_value(rounding=decimal.ROUND_CEILING))


def cpu_millicores(value: object, field: str = "cpu") -> int:
    """CPU quantity -> millicores, rounded up (``0.0001`` -> 1, like ``Quantity.MilliValue``)."""
    return _ceil(_CONTEXT.scaleb(parse_quantity(value, field), 3))


def memory_bytes(value: object, field: str = "memory") -> Decimal:
    """Memory quantity -> exact bytes (fractional bytes are kept: ``500m`` is 0.5)."""
    return parse_quantity(value, field)


def memory_mebibytes(value: object, field: str = "memory") -> float:
    """Memory quantity -> MiB (2**20 bytes) as a float, the unit of InferenceRequest fields."""
    return float(_CONTEXT.divide(memory_bytes(value, field), MIB_BYTES))


def count(value: object, field: str) -> float:
    """Extended-resource quantity (``nvidia.com/gpu: 2``) -> a count."""
    return float(parse_quantity(value, field))
