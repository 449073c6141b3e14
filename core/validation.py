"""The checks every configuration runs on the numbers it is given.

Configurations arrive from the command line, from links and from JSON files, so a number may be a
string, a bool (which Python counts as an integer), NaN or infinite; each check rejects those
with a message that names the parameter and its range, and returns the value as a plain int or
float so that equal configurations hash alike.
"""

from __future__ import annotations

import math
import numbers
from typing import Iterable, Optional

from .errors import ConfigError


def whole_number(name: str, value: object, low: Optional[int] = None, high: Optional[int] = None) -> int:
    """`value` as an int in [low, high] (either bound may be left out)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not _inside(value, low, high, False, False):
        raise ConfigError(f"{name} must be {describe_whole(low, high)}, got {value!r}")
    return int(value)


def real_number(name: str, value: object, low: Optional[float] = None, high: Optional[float] = None, *,
                open_low: bool = False, open_high: bool = False) -> float:
    """`value` as a finite float in the interval from `low` to `high`, each end closed unless opened."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value)
            or not _inside(value, low, high, open_low, open_high)):
        raise ConfigError(f"{name} must be {describe_real(low, high, open_low, open_high)}, got {value!r}")
    return float(value)


def describe_whole(low: Optional[int] = None, high: Optional[int] = None) -> str:
    """What `whole_number` allows, in words: "a whole number in 1 … 500"."""
    bounds = "" if low is None and high is None else f" in {_bound(low, '-∞')} … {_bound(high, '∞')}"
    return f"a whole number{bounds}"


def describe_real(low: Optional[float] = None, high: Optional[float] = None, open_low: bool = False, open_high: bool = False) -> str:
    """What `real_number` allows, in words: "a number in (0, 1]"."""
    left = "(" if open_low or low is None else "["
    right = ")" if open_high or high is None else "]"
    bounds = "" if low is None and high is None else f" in {left}{_bound(low, '-∞')}, {_bound(high, '∞')}{right}"
    return f"a number{bounds}"


def one_of(name: str, value: object, options: Iterable[object]) -> object:
    """`value` when it is one of `options`."""
    options = tuple(options)
    if isinstance(value, bool) != isinstance(options[0], bool) or value not in options:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, options))}, got {value!r}")
    return value


def true_or_false(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    return value


def _inside(value, low, high, open_low: bool, open_high: bool) -> bool:
    above = low is None or (value > low if open_low else value >= low)
    below = high is None or (value < high if open_high else value <= high)
    return above and below


def _bound(value, infinite: str) -> str:
    if value is None or (isinstance(value, float) and math.isinf(value)):
        return infinite
    return f"{value:g}" if isinstance(value, float) else str(value)
