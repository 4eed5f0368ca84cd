"""Kubernetes resource quantities and human durations, parsed strictly.

`500m`, `0.5`, `2` are CPU; `512Mi`, `1Gi`, `1G`, `1e9` are bytes. `512Mb` is a typo that
Kubernetes would reject at apply time; we reject it at load time, naming the key.
The canonical text is kept for manifests; the numeric value is used for budgets.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "P": Decimal(10**15),
    "E": Decimal(10**18),
}
_QUANTITY = re.compile(
    r"^(?P<num>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?[0-9]+)?\Z"
)
_DURATION = re.compile(r"^(?P<num>[0-9]+(?:\.[0-9]+)?)(?P<unit>ms|s|m|h|d)\Z")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_quantity(text: object) -> Decimal:
    """Value of a Kubernetes quantity; `ValueError` with the reason when malformed."""
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise ValueError(f"expected a quantity such as '500m' or '512Mi', got {text!r}")
    raw = str(text).strip()
    match = _QUANTITY.match(raw)
    if not match:
        hint = ""
        if re.match(r"^[0-9.]+[KMGTPE]b$", raw, re.IGNORECASE):
            hint = f" (did you mean '{raw[:-1]}i'?)"
        raise ValueError(
            f"malformed quantity {raw!r}: expected a non-negative number with an optional "
            f"suffix such as m, Ki, Mi, Gi, k, M, G{hint}"
        )
    try:
        number = Decimal(match["num"])
    except InvalidOperation:  # pragma: no cover - the regex admits only decimals
        raise ValueError(f"malformed quantity {raw!r}") from None
    suffix = match["suffix"] or ""
    if suffix in _BINARY:
        return number * _BINARY[suffix]
    if suffix in _DECIMAL:
        return number * _DECIMAL[suffix]
    return number * (Decimal(10) ** int(suffix[1:]))


def canonical_quantity(text: object) -> str:
    """The text to put in a manifest: what the user wrote, validated."""
    parse_quantity(text)
    return str(text).strip()


def parse_duration(value: object) -> float:
    """Seconds from `90s`, `2m`, `72h`, `7d`, `250ms` or a bare number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as '2m' or '72h', got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION.match(value.strip())
        if not match:
            raise ValueError(
                f"malformed duration {value!r}: expected a number with a unit ms, s, m, h or d"
            )
        seconds = float(match["num"]) * _DURATION_UNITS[match["unit"]]
    else:
        raise ValueError(f"expected a duration such as '2m' or '72h', got {value!r}")
    if seconds <= 0:
        raise ValueError(f"duration must be positive, got {value!r}")
    return seconds
