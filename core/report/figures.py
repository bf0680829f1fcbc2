"""The pictures of a stage's folder, embedded in the page as base64 ``data:`` URIs (the page stays one file).

Only regular PNG files inside the stage's folder are embedded (links leaving it are refused); a picture that
cannot be embedded becomes a ``Figure`` with a ``problem`` the page shows as a note instead.
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass
from pathlib import Path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_IMAGE_BYTES = 12 * 1024 * 1024  # a picture larger than this is named, not embedded
WIDE_RATIO = 1.8  # a picture at least this much wider than high spans the whole row of figures


@dataclass(frozen=True)
class Figure:
    """One picture for the page: its embedded data and caption, or why it could not be embedded."""

    name: str
    caption: str
    uri: str | None = None
    width: int = 0
    height: int = 0
    problem: str | None = None
    full_width: bool = False  # a grid of many small panels, whose labels need the whole row to be read

    @property
    def wide(self) -> bool:
        return self.full_width or (self.height > 0 and self.width / self.height >= WIDE_RATIO)


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


def caption_from_name(stem: str) -> str:
    """A caption for a picture nobody described: 'new_plot' → 'New plot'."""
    words = stem.replace("_", " ").strip()
    return (words[:1].upper() + words[1:]) if words else stem


def embed_figure(path: Path, caption: str, folder: Path, label: str | None = None) -> Figure:
    """The PNG at ``path`` (which must lie inside ``folder``) as a ``Figure``; ``label`` names it on the page."""
    name = label or path.name
    if not inside(path, folder):
        return Figure(name, caption, problem=f"{name}: missing")
    try:
        size = path.stat().st_size
        if size > MAX_IMAGE_BYTES:
            return Figure(
                name,
                caption,
                problem=f"{name} is too large to embed ({size / 1e6:.1f} MB); download it as an artifact.",
            )
        data = path.read_bytes()
    except OSError:
        return Figure(name, caption, problem=f"{name} could not be read")
    dims = png_size(data)
    if dims is None:
        return Figure(name, caption, problem=f"{name} is not a PNG image")
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return Figure(name, caption, uri=uri, width=dims[0], height=dims[1])
