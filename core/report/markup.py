"""Small HTML helpers for the report: escaping by default, tables, key/value lists, embedded PNG figures.

Everything that comes from data (class names, dataset names, messages, file names) goes through
``text()``, which escapes it; only the helpers here make raw markup, marked by the ``HTML`` type.
Torch-free and stdlib-only: the API imports this.
"""

from __future__ import annotations

import base64
import html
import json
import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_IMAGE_BYTES = 12 * 1024 * 1024  # a picture larger than this is named, not embedded
MAX_JSON_BYTES = 64 * 1024 * 1024


class HTML(str):
    """A string that is already markup (made by these helpers); ``text()`` passes it through unescaped."""


def text(value: Any) -> HTML:
    """``value`` as escaped HTML text (markup made here passes unchanged; None is an empty string)."""
    if isinstance(value, HTML):
        return value
    if value is None:
        return HTML("")
    return HTML(html.escape(str(value), quote=True))


def join(parts: Iterable[Any], sep: str = "") -> HTML:
    return HTML(sep.join(text(p) for p in parts))


def tag(name: str, content: Any = "", cls: str | None = None, **attrs: Any) -> HTML:
    """``<name class=… attr=…>content</name>``; attribute values and text content are escaped."""
    pairs = ([("class", cls)] if cls else []) + [
        (k.rstrip("_").replace("_", "-"), v) for k, v in attrs.items() if v is not None and v is not False
    ]
    attributes = "".join(f" {k}" if v is True else f' {k}="{html.escape(str(v), quote=True)}"' for k, v in pairs)
    return HTML(f"<{name}{attributes}>{text(content)}</{name}>")


# --- numbers -------------------------------------------------------------------------------------


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def pct(value: Any, digits: int = 1) -> str:
    return f"{value:.{digits}%}" if is_number(value) else "—"


def dec(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if is_number(value) else "—"


def human(value: Any, unit: str = "") -> str:
    """1234567 → '1.23M' (the CLI's style); '—' when unknown."""
    if not is_number(value):
        return "—"
    n = float(value)
    for prefix in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.3g}{' ' if unit else ''}{prefix}{unit}"
        n /= 1000
    return f"{n:.3g}{' ' if unit else ''}P{unit}"


def integer(value: Any) -> str:
    return f"{int(value):,}" if is_number(value) else "—"


def ms(value: Any) -> str:
    return f"{value:.2f} ms" if is_number(value) else "—"


# --- blocks --------------------------------------------------------------------------------------


def table(
    headers: Sequence[Any],
    rows: Iterable[Sequence[Any]],
    numeric: Iterable[int] = (),
    cls: str | None = None,
    row_classes: Sequence[str | None] | None = None,
    caption: Any = None,
) -> HTML:
    """A table; columns whose index is in ``numeric`` are right-aligned (tabular figures)."""
    numeric = set(numeric)
    head = "".join(tag("th", h, cls="num" if i in numeric else None, scope="col") for i, h in enumerate(headers))
    body = []
    for r, row in enumerate(rows):
        cells = "".join(
            tag("th" if i == 0 else "td", c, cls="num" if i in numeric else None, scope="row" if i == 0 else None)
            for i, c in enumerate(row)
        )
        row_cls = row_classes[r] if row_classes and r < len(row_classes) else None
        body.append(tag("tr", HTML(cells), cls=row_cls))
    inner = HTML(
        (tag("caption", caption) if caption else "") + f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody>"
    )
    return tag("div", tag("table", inner, cls=cls), cls="table-wrap")


def facts(pairs: Iterable[tuple[Any, Any]]) -> HTML:
    """A definition list of (label, value); pairs whose value is None or '' are left out."""
    items = [f"<div>{tag('dt', k)}{tag('dd', v)}</div>" for k, v in pairs if v is not None and v != ""]
    return HTML(f'<dl class="facts">{"".join(items)}</dl>') if items else HTML("")


def para(content: Any, cls: str | None = None) -> HTML:
    return tag("p", content, cls=cls)


def note(content: Any, cls: str = "note") -> HTML:
    return tag("div", content, cls=cls)


def chips(values: Iterable[Any]) -> HTML:
    return HTML('<span class="chips">' + "".join(tag("span", v, cls="chip") for v in values) + "</span>")


def badge(status: str | None) -> HTML:
    label = status or "unknown"
    slug = "".join(c if c.isalnum() else "-" for c in label.lower())
    return tag("span", label, cls=f"badge badge-{slug}")


# --- files ---------------------------------------------------------------------------------------


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


def inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` (resolved, links followed) is a regular file inside ``folder`` (resolved)."""
    try:
        resolved, root = path.resolve(), folder.resolve()
    except (OSError, RuntimeError, ValueError):
        return False
    return resolved.is_relative_to(root) and resolved.is_file()


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, or None when ``data`` is not a PNG."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return (width, height) if width > 0 and height > 0 else None


def png_files(folder: Path | None) -> list[Path]:
    """The PNG files directly in ``folder`` (sorted by name), links leaving the folder left out."""
    if folder is None or not folder.is_dir():
        return []
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError:
        return []
    return [p for p in entries if p.suffix.lower() == ".png" and not p.name.startswith(".") and inside(p, folder)]


def figure(path: Path, caption: Any, folder: Path, label: str | None = None) -> HTML:
    """A ``<figure>`` with the PNG embedded as a data: URI; a note instead when it cannot be embedded."""
    name = label or path.name
    if not inside(path, folder):
        return note(f"{name}: missing", "note warn")
    try:
        size = path.stat().st_size
        if size > MAX_IMAGE_BYTES:
            return note(f"{name} is too large to embed ({size / 1e6:.1f} MB); download it as an artifact.", "note warn")
        data = path.read_bytes()
    except OSError:
        return note(f"{name} could not be read", "note warn")
    dims = png_size(data)
    if dims is None:
        return note(f"{name} is not a PNG image", "note warn")
    width, height = dims
    wide = width / height >= 1.8
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    alt = caption if isinstance(caption, str) else name
    img = HTML(
        f'<img src="{uri}" alt="{html.escape(alt, quote=True)}" width="{width}" height="{height}" '
        f'data-file="{html.escape(name, quote=True)}">'
    )
    cap = tag("figcaption", HTML(f"{text(caption)} {tag('span', name, cls='file')}"))
    return tag("figure", HTML(img + cap), cls="wide" if wide else None)


def figures(items: Sequence[HTML], cls: str = "figs") -> HTML:
    return HTML(f'<div class="{cls}">{"".join(items)}</div>') if items else HTML("")


def as_mapping(value: Any) -> Mapping:
    return value if isinstance(value, Mapping) else {}


def as_list(value: Any) -> list:
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
