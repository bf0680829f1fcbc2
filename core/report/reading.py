"""Reading the stages' JSON results defensively: a missing file, key or a value of the wrong type reads as absent.

The results are dicts parsed from each stage's JSON file (``layercut.contracts.files.RESULT_JSON``); a report must
render from files of older versions or half-written runs too, so every lookup tolerates what is not there.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MAX_JSON_BYTES = 64 * 1024 * 1024


def read_json(path: Path | None) -> dict | None:
    """A JSON object from a file, or None when it is missing, too large or not a JSON object."""
    if path is None:
        return None
    try:
        if not path.is_file() or path.stat().st_size > MAX_JSON_BYTES:
            return None
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def is_number(value: Any) -> bool:
    """Whether ``value`` is a finite int or float (booleans are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def as_mapping(value: Any) -> Mapping:
    """``value`` if it is a mapping, else an empty one."""
    return value if isinstance(value, Mapping) else {}


def as_list(value: Any) -> list:
    """``value`` as a list if it is a list or tuple, else an empty list."""
    return list(value) if isinstance(value, (list, tuple)) else []


def get(value: Any, *keys: Any, default: Any = None) -> Any:
    """``value[k1][k2]…`` through mappings and lists, or ``default`` where a step is missing."""
    for key in keys:
        if isinstance(value, Mapping) and key in value:
            value = value[key]
        elif isinstance(value, (list, tuple)) and isinstance(key, int) and -len(value) <= key < len(value):
            value = value[key]
        else:
            return default
    return value
