"""Argument checks shared by `DETRLoss` and `MaskTerms`: Keras's "Expected ... Received" errors."""

from __future__ import annotations

import math
from typing import Any


def check_choice(arg: str, value: Any, choices: tuple[str, ...]) -> None:
    """Raises unless `value` is one of `choices`."""
    if value not in choices:
        raise ValueError(f"Expected `{arg}` to be one of {choices}. Received: {arg}={value!r}")


def check_weight(arg: str, value: Any) -> None:
    """Raises unless `value` is a finite number >= 0 (not a bool)."""
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"Expected `{arg}` to be a finite number >= 0. Received: {arg}={value!r}")


def check_unit(arg: str, value: Any) -> None:
    """Raises unless `value` is a number in `[0, 1]` (not a bool)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
        raise ValueError(f"Expected `{arg}` to be a number in [0, 1]. Received: {arg}={value!r}")


def standardize_weights(arg: str, weights: Any, names: tuple[str, ...]) -> tuple[float, ...]:
    """`weights` as floats, one finite number >= 0 per name, or a `ValueError`."""
    try:
        values = tuple(weights)
    except TypeError:
        values = ()
    if len(values) != len(names):
        raise ValueError(
            f"Expected `{arg}` to be None or {len(names)} numbers ({', '.join(names)}). "
            f"Received: {arg}={weights!r}"
        )
    for value in values:
        check_weight(arg, value)
    return tuple(float(value) for value in values)
