"""Installed, layercut is one import root: the wheel holds `layercut` and nothing else at the top level,
every module of core/, api/ and worker/ under it, and `import layercut` works in a fresh virtual environment."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import layercut
from layercut.testing import SOURCE_ROOT

FOLDERS = {"core": "layercut", "api": "layercut/api", "worker": "layercut/worker"}
"""Repository folder → where its files are installed (pyproject.toml's package-dir)."""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the files git knows (as a clean checkout has them: no stale build/)."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    tracked = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=SOURCE_ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in tracked)):
        if (SOURCE_ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(SOURCE_ROOT / name, source / name)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(out), "."],
        cwd=source,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    (path,) = out.glob("layercut-*.whl")
    return path


def installed_top_level(names: list[str]) -> set[str]:
    """The top-level entries a wheel puts into site-packages (its .dist-info folder aside)."""
    return {name.split("/", 1)[0] for name in names} - {n.split("/", 1)[0] for n in names if ".dist-info/" in n}


def test_the_wheel_installs_one_top_level_package(wheel: Path):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert installed_top_level(names) == {"layercut"}


def test_every_module_of_the_repository_is_in_the_wheel(wheel: Path):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    expected = {
        f"{target}/{path.relative_to(SOURCE_ROOT / folder).as_posix()}"
        for folder, target in FOLDERS.items()
        for path in (SOURCE_ROOT / folder).rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert expected - names == set(), "add the missing packages to [tool.setuptools] packages in pyproject.toml"
    assert "layercut/api/ui_static/index.html" in names


def test_a_fresh_environment_imports_layercut_and_its_version(wheel: Path, tmp_path: Path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", str(wheel)],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    top_level = {p.name for p in Path(purelib).iterdir() if not p.name.endswith(".dist-info")}
    assert top_level == {"layercut"}, top_level
    # Without its dependencies (not installed here): the package and its torch-free contracts still import.
    shown = subprocess.run(
        [str(python), "-c", "import sys, layercut; print(layercut.__version__); assert 'torch' not in sys.modules"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == layercut.__version__ != "0+unknown"


def test_the_python_api_is_lazy_and_complete():
    code = (
        "import sys, layercut; assert 'torch' not in sys.modules; "
        "import layercut.contracts.spec, layercut.contracts.jobs, layercut.contracts.configs; "
        "assert 'torch' not in sys.modules, 'the contracts imported torch'; "
        "print(sorted(layercut.PUBLIC_FUNCTIONS)); print(callable(layercut.run))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=sysconfig.get_paths()["data"]
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "True"
    for name in layercut.PUBLIC_FUNCTIONS:
        assert callable(getattr(layercut, name)), name
