"""Type check of config values read from JSON (config.json, --config): a value of the wrong type
is a one-line ConfigError naming the key and the expected type, never a TypeError later."""

from __future__ import annotations

import dataclasses
from typing import Any

_CHECKS = {
    "bool": lambda v: isinstance(v, bool),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "None": lambda v: v is None,
}


def type_errors(cls: type, values: dict[str, Any]) -> list[str]:
    """'key: expected T, got V' for every value whose type does not match its field's annotation
    (annotations of the form 'int', 'float | None', ...; others are not checked)."""
    out = []
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        names = [n.strip() for n in str(f.type).split("|")]
        if not all(n in _CHECKS for n in names):
            continue
        v = values[f.name]
        if not any(_CHECKS[n](v) for n in names):
            out.append(f"{f.name}: expected {f.type}, got {v!r}")
    return out
