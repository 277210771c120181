"""Checks of option values, shared by every settings dataclass (pipeline sections, ModelOptions, TrackerConfig,
events rules) so that a bad value reads the same wherever it was written (a TOML file, a flag, Python)::

    sinks.crf: expected an integer 0..51, got 99

Each check returns the value and raises a one-line :class:`~streamseg.errors.ConfigError` naming the key, what
is allowed and the value. Booleans are never numbers and numbers never booleans (TOML ``true``, not ``1``); a
number may be an int; non-finite numbers (TOML ``nan``, ``inf``) are never accepted.
"""

from __future__ import annotations

import math
import dataclasses
import ipaddress
import re
from typing import Any, Sequence

from streamseg.errors import ConfigError


def bad(key: str, expected: str, value: Any) -> ConfigError:
    """The error for ``value`` at ``key``; ``expected`` says what is allowed (``"an integer >= 1"``)."""
    return ConfigError(f"{key}: expected {expected}, got {value!r}")


def span(low=None, high=None, above=None, below=None, *, integers: bool = False) -> str:
    """The allowed values in words: ``0..51`` (integers), ``in [0, 1]``, ``in (0, 1)``, ``>= 1``, ``> 0``; empty
    without bounds. ``low``/``high`` are included, ``above``/``below`` excluded."""
    start, end = (low if low is not None else above), (high if high is not None else below)
    if start is not None and end is not None:
        if integers:
            return f"{start}..{end}"
        return f"in {'[' if low is not None else '('}{start}, {end}{']' if high is not None else ')'}"
    if start is not None:
        return f"{'>=' if low is not None else '>'} {start}"
    return f"{'<=' if high is not None else '<'} {end}" if end is not None else ""


def _in_span(value, low, high, above, below) -> bool:
    return ((low is None or value >= low) and (high is None or value <= high)
            and (above is None or value > above) and (below is None or value < below))


def integer(key: str, value: Any, low: int | None = None, high: int | None = None, *, optional: bool = False):
    """An int (not a bool) in ``low..high``; None passes when ``optional``."""
    if value is None and optional:
        return value
    if isinstance(value, bool) or not isinstance(value, int) or not _in_span(value, low, high, None, None):
        raise bad(key, f"an integer {span(low, high, integers=True)}".rstrip(), value)
    return value


def number(key: str, value: Any, low: float | None = None, high: float | None = None, *, above: float | None = None,
           below: float | None = None, optional: bool = False):
    """A finite int or float within the bounds (``low``/``high`` included, ``above``/``below`` excluded)."""
    if value is None and optional:
        return value
    finite = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not finite or not _in_span(value, low, high, above, below):
        kind = "a finite number" if isinstance(value, float) and not math.isfinite(value) else "a number"
        raise bad(key, f"{kind} {span(low, high, above, below)}".rstrip(), value)
    return value


def boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise bad(key, "true or false", value)
    return value


def booleans(owner: Any, section: str) -> None:
    """Every field of the dataclass ``owner`` annotated ``bool``, as ``section.field``."""
    for item in dataclasses.fields(owner):
        if item.type in (bool, "bool"):
            boolean(f"{section}.{item.name}", getattr(owner, item.name))


def choice(key: str, value: Any, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise bad(key, f"one of {', '.join(choices)}", value)
    return value


def text(key: str, value: Any, *, optional: bool = False):
    """A non-empty string (a path, a name); None passes when ``optional``."""
    if value is None and optional:
        return value
    if not isinstance(value, str) or not value.strip():
        raise bad(key, "a non-empty string", value)
    return value


def names(key: str, value: Any) -> tuple[str, ...]:
    """A list of non-empty strings (or one comma-separated string) as a tuple."""
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v.strip() for v in value):
        raise bad(key, "a list of non-empty strings", value)
    return tuple(value)


_HOST_NAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


def host(key: str, value: Any) -> str:
    """An IP address (``0.0.0.0`` listens on every interface) or a host name."""
    text(key, value)
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not _HOST_NAME.fullmatch(value):
            raise bad(key, "an IP address or a host name", value) from None
    return value
