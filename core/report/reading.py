"""Reading the stages' results: a JSON file into its contract model (``layercut.contracts.results``), once.

A result that validates is the model, exactly as the stage wrote it. One that does not (a file of an older or a
newer version, edited by hand, cut short) must not take the page down: ``parse`` then returns a *partial* model,
built without validation from the parts that do validate, with the first validation error to show beside it.
In a partial model a field that is missing or does not validate is empty: its default when it has one, else None
for a value or a nested model, ``[]`` or ``{}`` for a list or a mapping; a list or mapping keeps the items that
validate, and a nested model is partial in turn. Sections read every
result as if it might be partial: a value may be None, a nested model may be None, a list may be empty.
"""

from __future__ import annotations

import json
import math
import types
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Generic, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from layercut.contracts.errors import first_error

MAX_JSON_BYTES = 64 * 1024 * 1024

M = TypeVar("M", bound=BaseModel)
_NOTHING: Any = object()  # what salvaging a value that does not validate at all gives


def load_json(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """A file's JSON object and None, or None and why it could not be read ("is not valid JSON (…)")."""
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            return None, f"is too large to read ({size / 1e6:.0f} MB)"
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None, "is not UTF-8 text"
    except OSError as exc:
        return None, f"could not be read ({exc.strerror or type(exc).__name__})"
    try:
        value = json.loads(text)
    except ValueError as exc:
        return None, f"is not valid JSON ({exc})"
    if not isinstance(value, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")
        return None, f"holds {kind}, not a JSON object"
    return value, None


def read_json(path: Path | None) -> dict[str, Any] | None:
    """A JSON object from a file, or None when it is missing, too large or not a JSON object."""
    if path is None or not path.is_file():
        return None
    return load_json(path)[0]


def is_number(value: Any) -> bool:
    """Whether ``value`` is a finite int or float (booleans are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def first(*values: Any) -> Any:
    """The first value that is not None (a measure from the result that records it best, else from another)."""
    return next((value for value in values if value is not None), None)


@dataclass(frozen=True)
class Parsed(Generic[M]):
    """A result read into its model: validated (``error`` None), or partial with its first validation error."""

    result: M
    error: str | None = None


def parse(model: type[M], raw: Any) -> Parsed[M]:
    """``raw`` validated as ``model``; when it does not validate, the partial model of what does, and why not."""
    try:
        return Parsed(model.model_validate(raw))
    except ValidationError as exc:
        return Parsed(salvage(model, raw if isinstance(raw, Mapping) else {}), first_error(exc))


def empty(model: type[M]) -> M:
    """A partial ``model`` with nothing in it (every field empty)."""
    return salvage(model, {})


def salvage(model: type[M], data: Mapping[str, Any]) -> M:
    """A partial ``model`` from ``data``: every field that validates, the rest empty (built without validation)."""
    values: dict[str, Any] = {}
    present: set[str] = set()
    for name, info in model.model_fields.items():
        key = info.alias if info.alias is not None and info.alias in data else name
        value = _salvage_value(info.rebuild_annotation(), info.annotation, data[key]) if key in data else _NOTHING
        if value is not _NOTHING:
            present.add(name)
        values[info.alias or name] = _empty_value(info) if value is _NOTHING else value  # model_construct: alias
    return model.model_construct(_fields_set=present, **values)


def _empty_value(info: FieldInfo) -> Any:
    """What a partial model holds for a field that is missing or does not validate."""
    if not info.is_required():
        return info.get_default(call_default_factory=True, validated_data={})
    container = get_origin(_unwrap(info.annotation))
    return [] if container is list else {} if container is dict else None


def _unwrap(annotation: Any) -> Any:
    return get_args(annotation)[0] if get_origin(annotation) is Annotated else annotation


@cache
def _adapter(annotation: Any) -> TypeAdapter[Any]:
    return TypeAdapter(annotation)


def _validate(annotation: Any, value: Any) -> tuple[bool, Any]:
    try:
        adapter = _adapter(annotation)
    except TypeError:  # an annotation that cannot be a cache key
        adapter = TypeAdapter(annotation)
    try:
        return True, adapter.validate_python(value)
    except ValidationError:
        return False, None


def _salvage_value(annotation: Any, bare: Any, value: Any) -> Any:
    """``value`` validated as ``annotation``, else what of it validates (``bare``: the annotation without
    constraints), else ``_NOTHING``."""
    ok, validated = _validate(annotation, value)
    return validated if ok else _partial(bare, value)


def _partial(annotation: Any, value: Any) -> Any:
    """The parts of ``value`` that validate as ``annotation`` (a model, list, mapping or union of them), or
    ``_NOTHING``."""
    annotation = _unwrap(annotation)
    origin, args = get_origin(annotation), get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return salvage(annotation, value) if isinstance(value, Mapping) else _NOTHING
    if origin in (Union, types.UnionType):
        found = [p for arm in args if arm is not type(None) and (p := _partial(arm, value)) is not _NOTHING]
        models = [p for p in found if isinstance(p, BaseModel)]
        if models:  # the model arm that reads the most of it
            return max(models, key=lambda p: len(p.model_fields_set))
        return found[0] if found else _NOTHING
    if origin is list and isinstance(value, (list, tuple)):
        (item,) = args
        items = [_salvage_value(item, item, v) for v in value]
        return [v for v in items if v is not _NOTHING]
    if origin is dict and isinstance(value, Mapping):
        key_type, item = args
        out = {}
        for k, v in value.items():
            ok, key = _validate(key_type, k)
            if ok and (validated := _salvage_value(item, item, v)) is not _NOTHING:
                out[key] = validated
        return out
    return _NOTHING
