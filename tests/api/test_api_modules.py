"""The API's rooms: route modules share what they need through ``layercut.api.crud`` and never import one another."""

from __future__ import annotations

import ast
from pathlib import Path

import layercut.api.routes


def test_route_modules_do_not_import_each_other():
    folder = Path(layercut.api.routes.__file__).parent
    crossings = []
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            crossings += [f"{path.stem} → {name}" for name in names if name.startswith("layercut.api.routes.")]
    assert crossings == []
