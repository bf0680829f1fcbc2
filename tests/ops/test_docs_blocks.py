"""The shell and Python blocks of the README and docs/service.md work as pasted: each block is marked
`<!-- docs-test: run -->` (run here) or `<!-- docs-test: skip: why -->`, and the run ones are run as written, in
order, one bash per document with `set -euo pipefail` (a Python block as `python -` in that shell, as a user would
paste it into `python`), from a directory that is not the server's, in a fresh home with no LAYERCUT_* variables — so
`layercut serve` and `layercut keys` must meet in the per-user data directory on their own — against a
`layercut serve` this test starts (its address in LAYERCUT_URL, which the blocks read)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from layercut.testing import SOURCE_ROOT
from layercut.testing.commands import serving_embedded

DOCUMENTS = ["README.md", "docs/service.md"]
BLOCK = re.compile(r"^(?P<marker>[^\n]*)\n```(?P<language>bash|python)\n(?P<code>.*?)^```", re.S | re.M)
MARKER = re.compile(r"<!-- docs-test: (run|skip: .+) -->")


def shell_blocks(document: str) -> list[tuple[str, str]]:
    """(marker, shell code) of every ```bash and ```python block of ``document``, the marker being the line just
    above it; a Python block becomes the shell line that runs it."""
    text = (SOURCE_ROOT / document).read_text(encoding="utf-8")
    blocks = []
    for m in BLOCK.finditer(text):
        code = m["code"] if m["language"] == "bash" else f"python - <<'LAYERCUT_PYTHON'\n{m['code']}LAYERCUT_PYTHON\n"
        blocks.append((m["marker"].strip(), code))
    return blocks


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_shell_block_says_whether_the_tests_run_it(document: str) -> None:
    blocks = shell_blocks(document)
    assert blocks, f"{document} has no shell block"
    unmarked = [code.splitlines()[0] for marker, code in blocks if not MARKER.fullmatch(marker)]
    assert unmarked == [], f"{document}: blocks without a <!-- docs-test: run|skip: why --> line above: {unmarked}"
    assert len(blocks) >= 4


def user_environment(home: Path, venv_bin: Path) -> dict[str, str]:
    """A new user's shell: its own home, layercut on the PATH (as `. .venv/bin/activate` puts it), no LAYERCUT_*."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("LAYERCUT_", "XDG_"))}
    return {
        **keep,
        "HOME": str(home),
        "PATH": f"{venv_bin}{os.pathsep}{keep.get('PATH', '')}",
        "MPLBACKEND": "Agg",
        "PYTHONUNBUFFERED": "1",
    }


@pytest.mark.parametrize("document", DOCUMENTS)
def test_the_shell_blocks_work_as_pasted(tmp_path: Path, document: str) -> None:
    runnable = [code for marker, code in shell_blocks(document) if marker == "<!-- docs-test: run -->"]
    assert runnable, f"{document}: no block is run"
    home, server_dir, user_dir = tmp_path / "home", tmp_path / "server", tmp_path / "elsewhere"
    for folder in (home, server_dir, user_dir):
        folder.mkdir()
    env = user_environment(home, Path(sys.executable).parent)
    with serving_embedded(server_dir, env=env) as (base, _, _):
        script = "set -euo pipefail\n" + "\n".join(runnable)
        done = subprocess.run(
            ["bash", "-c", script],
            cwd=user_dir,
            env={**env, "LAYERCUT_URL": base},
            capture_output=True,
            text=True,
            timeout=900,
        )
    log = (server_dir / "serve.log").read_text()
    assert done.returncode == 0, (
        f"{document}: exit {done.returncode}\n{done.stdout}\n{done.stderr}\n--- server\n{log[-3000:]}"
    )
    assert (home / ".local" / "share" / "layercut" / "layercut.db").is_file(), "the per-user data directory"
    assert not (user_dir / "layercut-data").exists() and not (server_dir / "layercut-data").exists()
    if document == "docs/service.md":  # the walk-through ran the pipeline to the end and verified the downloads
        assert "pipeline" in done.stdout and ": succeeded" in done.stdout, done.stdout
        assert "compare.json: OK" in done.stdout and (user_dir / "compare.json").is_file()
        assert '"within_budget"' in done.stdout
        assert (user_dir / "comparison" / "compare.json").is_file(), "the Python walk-through's downloads"
