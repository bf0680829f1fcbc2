"""The report of a CLI run folder (``layercut run --out DIR``): DIR/report.html.

A run folder holds run.json and one folder per stage (``RUN_FOLDERS``: base/, analysis/, slim/, compare/ and,
when run, explain/). A folder of a run still going, or stopped early, renders too: the stages not there yet say
"not run yet".
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from layercut.contracts.files import (
    ANALYSIS_JSON,
    INITIAL_CHECKPOINT,
    METRICS_JSON,
    REPORT_HTML,
    RUN_FOLDERS,
    RUN_JSON,
    TRUNCATE_JSON,
)
from layercut.contracts.spec import SPEC_KEY
from layercut.report.page import SUBTITLE, render_report
from layercut.report.reading import as_list, get, is_number, read_json
from layercut.report.stages import StageInput

REPORT_NAME = REPORT_HTML
MAX_HEADER_BYTES = 100 * 1024 * 1024


def checkpoint_spec(path: Path) -> dict | None:
    """The layercut spec stored in a safetensors file's header, read without torch (None if absent or unreadable)."""
    try:
        with path.open("rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            if not 0 < size <= MAX_HEADER_BYTES:
                return None
            header = json.loads(handle.read(size))
        spec = json.loads(get(header, "__metadata__", SPEC_KEY) or "null")
    except (OSError, ValueError, UnicodeDecodeError, TypeError):
        return None
    return spec if isinstance(spec, dict) else None


def truncate_summary(run_dir: Path, run: dict | None = None) -> dict | None:
    """What the truncate stage did in a run folder, shaped like the truncate job's summary (truncate.json).

    From slim/truncate.json when present; else from run.json's cut point and parameter counts, completed from
    slim/initial.safetensors' spec and the metrics files (a run still going has no run.json yet).
    """
    slim = run_dir / RUN_FOLDERS["truncate"]
    stored = read_json(slim / TRUNCATE_JSON)
    if stored is not None:
        return stored
    initial = slim / INITIAL_CHECKPOINT
    cut = get(run, "cut_point")
    spec = checkpoint_spec(initial) if initial.is_file() else None
    if not isinstance(cut, dict) and spec is None:
        return None
    cut = dict(cut) if isinstance(cut, dict) else dict(get(spec, "cut_point") or {})
    base_metrics = read_json(run_dir / RUN_FOLDERS["train"] / METRICS_JSON)
    base_params = get(run, "base", "params", default=get(base_metrics, "params"))
    slim_params = get(run, "slim", "params", default=get(read_json(slim / METRICS_JSON), "params"))
    analysis = read_json(run_dir / RUN_FOLDERS["analyze"] / ANALYSIS_JSON)
    summary: dict[str, Any] = {
        "stage": "truncate",
        "checkpoint": f"{RUN_FOLDERS['truncate']}/{INITIAL_CHECKPOINT}",
        "cut_point": {"index": cut.get("index"), "name": cut.get("name")},
        "chosen_by": cut.get("chosen_by"),
        "base_params": base_params,
        "slim_params": slim_params,
        "cut_points_total": cut.get("of") or len(as_list(get(analysis, "cut_points"))) or None,
    }
    if is_number(base_params) and is_number(slim_params) and base_params:
        summary["params_kept"] = slim_params / base_params
    if spec is not None and get(spec, "head_dropout") is not None:
        summary["head_dropout"] = spec["head_dropout"]
    return summary


def run_stages(run_dir: str | Path) -> list[StageInput]:
    """The stages of a run folder, in pipeline order, judged by the files present."""
    root = Path(run_dir)
    run = read_json(root / RUN_JSON)

    def stage(kind: str) -> StageInput:
        return StageInput(kind, root / RUN_FOLDERS[kind], label=f"{RUN_FOLDERS[kind]}/")

    truncate = StageInput(
        "truncate",
        None,
        summary=truncate_summary(root, run),
        label=f"{RUN_FOLDERS['truncate']}/",
        expects=INITIAL_CHECKPOINT,
    )
    return [stage("train"), stage("analyze"), truncate, stage("retrain"), stage("compare"), stage("explain")]


def render_run_report(run_dir: str | Path) -> str:
    """The HTML report of a run folder (not written)."""
    root = Path(run_dir)
    run = read_json(root / RUN_JSON) or {}
    base = read_json(root / RUN_FOLDERS["train"] / METRICS_JSON) or {}
    arch = run.get("architecture") or base.get("architecture")
    dataset = get(base, "data", "name") or get(run, "data", "source") or get(base, "data", "source")
    title = " on ".join(str(x) for x in (arch, dataset) if x) or root.name
    details = [("Run folder", str(root.resolve()))]
    return render_report(run_stages(root), title, subtitle=SUBTITLE, details=details)


def write_run_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html`` (atomically) from a CLI run folder and return its path."""
    root = Path(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder (give the --out folder of `layercut run`)")
    page = render_run_report(root)
    out = root / REPORT_NAME
    handle, tmp = tempfile.mkstemp(prefix=".report-", suffix=".tmp", dir=root)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(page)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
