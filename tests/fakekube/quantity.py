"""Kubernetes resource quantities (``resource.Quantity``): "2", "500m", "1Gi", "1e3".

Parsed exactly (``Fraction``) so that capacity sums and comparisons behave as the
scheduler's integer milli-unit arithmetic does; byte counts formatted back the way the
apiserver canonicalises a binary-SI quantity ("1Gi", "1536Mi").
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 1000),
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+)([eE][+-]?[0-9]+|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")


class QuantityError(ValueError):
    pass


def parse_quantity(value: str | int | float) -> Fraction:
    """Return the exact value of a quantity; ``QuantityError`` for malformed input.

    The wording of the error follows the apiserver's: "quantities must match the
    regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'".
    """
    if isinstance(value, bool):
        raise QuantityError("quantities must be numbers or strings")
    if isinstance(value, int):
        return Fraction(value)
    if isinstance(value, float):
        return Fraction(str(value))
    match = _QUANTITY.match(str(value).strip())
    if not match or match.group(1) in (".", "+", "-"):
        raise QuantityError(
            "quantities must match the regular expression "
            "'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
        )
    number = Fraction(match.group(1))
    suffix = match.group(2) or ""
    if suffix in _BINARY:
        return number * _BINARY[suffix]
    if suffix[:1] in ("e", "E"):
        return number * Fraction(10) ** int(suffix[1:])
    return number * _DECIMAL[suffix]


def format_bytes(value: Fraction | int) -> str:
    """A byte count as the apiserver prints a BinarySI quantity: the largest binary
    suffix that divides it exactly ("1Gi", "1536Mi"), else plain bytes."""
    value = int(math.ceil(value))
    for suffix, factor in sorted(_BINARY.items(), key=lambda kv: -kv[1]):
        if value and value % factor == 0:
            return f"{value // factor}{suffix}"
    return str(value)
