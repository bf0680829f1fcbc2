"""The docs name real things: every path docs/architecture.md points at exists, every setting is in docs/service.md."""

from __future__ import annotations

import re

from layercut.testing import SOURCE_ROOT

ARCHITECTURE = SOURCE_ROOT / "docs" / "architecture.md"


def named_paths(text: str) -> set[str]:
    """The repository paths written in backticks (``core/jobs/runner.py``, ``api/routes/``, ``core/local.py:run``)."""
    found = set()
    for quoted in re.findall(r"`([^`\s]+)`", text):
        path = quoted.split(":", 1)[0]
        if re.match(r"^(core|api|worker|migrations|tests|bench|docs)/", path):
            found.add(path)
    return found


def test_the_architecture_page_points_at_files_that_exist():
    paths = named_paths(ARCHITECTURE.read_text())
    assert len(paths) > 20
    missing = sorted(p for p in paths if not (SOURCE_ROOT / p).exists())
    assert missing == [], f"docs/architecture.md names paths that do not exist: {missing}"


def test_every_room_of_the_package_is_on_the_page():
    text = ARCHITECTURE.read_text()
    rooms = sorted(p.name for p in (SOURCE_ROOT / "core").iterdir() if p.is_dir() and (p / "__init__.py").is_file())
    rooms += sorted(p.stem for p in (SOURCE_ROOT / "core").glob("*.py") if p.stem != "__init__")
    assert [room for room in rooms if f"`core/{room}" not in text] == []


def test_the_service_docs_list_every_setting():
    from layercut.settings import Settings

    table = (SOURCE_ROOT / "docs" / "service.md").read_text()
    missing = [
        f"LAYERCUT_{name.upper()}" for name in Settings.model_fields if f"`LAYERCUT_{name.upper()}`" not in table
    ]
    assert missing == [], f"docs/service.md's settings table lacks {missing}"
