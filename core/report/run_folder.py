"""The report of a CLI run folder (``layercut run --out DIR``): DIR/report.html.

A run folder holds run.json and one folder per stage (``RUN_FOLDERS``: base/, analysis/, slim/, compare/ and,
when run, explain/; select/ when the auto cut chose the cut, sweep/ when a sweep ran). A folder of a run still
going, or stopped early, renders too: the stages not there yet say "not run yet".
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from layercut.contracts.files import (
    ANALYSIS_JSON,
    INITIAL_CHECKPOINT,
    METRICS_JSON,
    REPORT_HTML,
    RESULT_JSON,
    RUN_FOLDERS,
    RUN_JSON,
    TRUNCATE_JSON,
)
from layercut.contracts.results import AnalyzeResult, RetrainResult, RunSummary, TrainResult
from layercut.contracts.spec import SPEC_KEY, ModelSpec
from layercut.report.page import SUBTITLE, render_report
from layercut.report.reading import first, is_number, parse, read_json
from layercut.report.stages import StageInput

REPORT_NAME = REPORT_HTML
MAX_HEADER_BYTES = 100 * 1024 * 1024

M = TypeVar("M", bound=BaseModel)


def read_result(path: Path, model: type[M]) -> M | None:
    """The JSON file at ``path`` as ``model`` (partial when it does not validate), or None when it is missing or
    not a JSON object."""
    raw = read_json(path)
    return parse(model, raw).result if raw is not None else None


def checkpoint_spec(path: Path) -> ModelSpec | None:
    """The layercut spec stored in a safetensors file's header, read without torch (None if absent or unreadable;
    partial when it does not validate)."""
    try:
        with path.open("rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            if not 0 < size <= MAX_HEADER_BYTES:
                return None
            header = json.loads(handle.read(size))
        metadata = header.get("__metadata__") if isinstance(header, dict) else None
        spec = json.loads(metadata.get(SPEC_KEY) or "null") if isinstance(metadata, dict) else None
    except (OSError, ValueError, UnicodeDecodeError, TypeError):
        return None
    return parse(ModelSpec, spec).result if isinstance(spec, dict) else None


def truncate_summary(run_dir: Path, run: RunSummary | None = None) -> dict[str, Any] | None:
    """What the truncate stage did in a run folder without slim/truncate.json (a run of an older version), shaped
    like truncate.json: run.json's cut point and parameter counts, completed from slim/initial.safetensors' spec and
    the metrics files (a run still going has no run.json yet). None when neither tells where it was cut."""
    slim = run_dir / RUN_FOLDERS["truncate"]
    initial = slim / INITIAL_CHECKPOINT
    cut = run.cut_point if run is not None else None
    spec = checkpoint_spec(initial) if initial.is_file() else None
    if cut is None and spec is None:
        return None
    index, name = (cut.index, cut.name) if cut is not None else (None, None)
    if cut is None and spec is not None and spec.cut_point is not None:
        index, name = spec.cut_point.index, spec.cut_point.name
    base = read_result(run_dir / RUN_FOLDERS["train"] / METRICS_JSON, TrainResult)
    retrained = read_result(slim / METRICS_JSON, RetrainResult)
    analysis = read_result(run_dir / RUN_FOLDERS["analyze"] / ANALYSIS_JSON, AnalyzeResult)
    base_params = first(run.base.params if run is not None and run.base else None, base and base.params)
    slim_params = first(run.slim.params if run is not None and run.slim else None, retrained and retrained.params)
    summary: dict[str, Any] = {
        "stage": "truncate",
        "checkpoint": f"{RUN_FOLDERS['truncate']}/{INITIAL_CHECKPOINT}",
        "cut_point": {"index": index, "name": name},
        "chosen_by": cut.chosen_by if cut is not None else None,
        "base_params": base_params,
        "slim_params": slim_params,
        "cut_points_total": (cut.of if cut is not None else None) or (len(analysis.cut_points) if analysis else None),
    }
    if is_number(base_params) and is_number(slim_params) and base_params:
        summary["params_kept"] = slim_params / base_params
    return {key: value for key, value in summary.items() if value is not None}


def run_stages(run_dir: str | Path) -> list[StageInput]:
    """The stages of a run folder, in pipeline order, judged by the files present (select and sweep only when their
    folder is there: a run cut at the knee or at a named cut point has neither; mlflow once the run was logged)."""
    root = Path(run_dir)

    def stage(kind: str) -> StageInput:
        return StageInput(kind, root / RUN_FOLDERS[kind], label=f"{RUN_FOLDERS[kind]}/")

    slim = f"{RUN_FOLDERS['truncate']}/"
    result_file = root / RUN_FOLDERS["truncate"] / TRUNCATE_JSON  # slim/ holds the retrain stage's pictures
    older = None if result_file.is_file() else truncate_summary(root, read_result(root / RUN_JSON, RunSummary))
    truncate = StageInput(
        "truncate",
        None,
        summary=older,
        label=slim,
        expects=INITIAL_CHECKPOINT,
        result_file=result_file,
        source=f"the cut recorded in {RUN_JSON} and {slim}{INITIAL_CHECKPOINT} ({slim}{TRUNCATE_JSON} is missing)",
    )
    optional = {kind: [stage(kind)] if (root / RUN_FOLDERS[kind]).is_dir() else [] for kind in ("select", "sweep")}
    logged = StageInput("mlflow", root, label=f"{RUN_FOLDERS['mlflow']}/")  # its key file is under the run folder
    optional["mlflow"] = [logged] if (root / RESULT_JSON["mlflow"]).is_file() else []
    return [
        stage("train"),
        stage("analyze"),
        *optional["select"],
        truncate,
        stage("retrain"),
        stage("compare"),
        stage("explain"),
        *optional["sweep"],
        *optional["mlflow"],
    ]


def render_run_report(run_dir: str | Path, shown_as: str | None = None) -> str:
    """The HTML report of a run folder (not written); ``shown_as`` names the run instead of the folder's path."""
    root = Path(run_dir)
    run = read_result(root / RUN_JSON, RunSummary)
    base = read_result(root / RUN_FOLDERS["train"] / METRICS_JSON, TrainResult)
    base_data = base.data if base is not None else None
    arch = (run and run.architecture) or (base and base.architecture)
    dataset = (
        (base_data and base_data.name) or (run and run.data and run.data.source) or (base_data and base_data.source)
    )
    title = " on ".join(str(x) for x in (arch, dataset) if x) or root.name
    details = [("Run", shown_as)] if shown_as else [("Run folder", str(root.resolve()))]
    return render_report(run_stages(root), title, subtitle=SUBTITLE, details=details, run=run)


def write_run_report(run_dir: str | Path, shown_as: str | None = None) -> Path:
    """Write ``run_dir/report.html`` (atomically) from a CLI run folder and return its path."""
    root = Path(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder (give the --out folder of `layercut run`)")
    page = render_run_report(root, shown_as)
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
