"""What the ``layercut`` commands print: one-line errors, JSON, and the human tables and lines of each command.

Results go to stdout (``out_console``), messages and progress to stderr (``err_console``), so that
``layercut … --json | jq`` and ``KEY=$(layercut keys create …)`` work.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from layercut.contracts.files import MLFLOW_FOLDER, MLFLOW_JSON
from layercut.contracts.results import (
    AnalyzeResult,
    Budget,
    Candidate,
    CompareResult,
    ExplainResult,
    MlflowResult,
    RetrainResult,
    RunSummary,
    TrainResult,
    TruncateResult,
)
from layercut.contracts.spec import CutPointRef

out_console = Console()
err_console = Console(stderr=True)


def print_error(message: str) -> None:
    """One red ``error:`` line on stderr (rich may wrap it; it is never a traceback)."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """End the command with one error line and exit status ``code`` (2: the user's input was wrong)."""
    print_error(message)
    raise typer.Exit(code)


def print_json(payload: Any) -> None:
    """One indented JSON document on stdout (paths and other objects as strings)."""
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")


def print_result(result: BaseModel, leave_out: frozenset[str] = frozenset()) -> None:
    """A stage's result as the JSON its file holds (non-finite floats as null), less the bulky top-level fields
    ``leave_out`` that the output leaves to the files."""
    sys.stdout.write(result.model_dump_json(indent=2, exclude=set(leave_out) or None) + "\n")


def human(n: float) -> str:
    """A count with a metric suffix and three significant digits: 1234567 → 1.23M."""
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.3g}{unit}"
        n /= 1000
    return f"{n:.3g}P"


def print_run(summary: RunSummary, out: Path) -> None:
    """The table of ``layercut run``: base beside slim (accuracy, F1, size, MACs, latency) and where the cut is."""
    base, slim, cut = summary.base, summary.slim, summary.cut_point
    table = Table(title=f"{summary.architecture} on {summary.data.source}: base vs slim")
    for column in ("", "base", "slim", "change"):
        table.add_column(column, justify="right" if column else "left")
    table.add_row(
        "test accuracy",
        f"{base.accuracy:.2%}",
        f"{slim.accuracy:.2%}",
        f"{(slim.accuracy - base.accuracy) * 100:+.1f} pts",
    )
    table.add_row("macro F1", f"{base.macro_f1:.3f}", f"{slim.macro_f1:.3f}", f"{slim.macro_f1 - base.macro_f1:+.3f}")
    table.add_row("parameters", human(base.params), human(slim.params), f"{slim.params / base.params:.1%} kept")
    table.add_row("MACs / image", human(base.macs), human(slim.macs), f"{slim.macs / base.macs:.1%} kept")
    table.add_row(
        "checkpoint",
        human(base.checkpoint_bytes) + "B",
        human(slim.checkpoint_bytes) + "B",
        f"{slim.checkpoint_bytes / base.checkpoint_bytes:.1%} kept",
    )
    for label, b in base.latency_ms.items():
        s = slim.latency_ms.get(label)
        if s is None:
            continue
        device, batch = label.rsplit("_b", 1)
        where = "ONNX Runtime CPU" if device == "onnxruntime_cpu" else device.upper()
        table.add_row(f"{where} latency, batch {batch}", f"{b:.2f} ms", f"{s:.2f} ms", f"{b / s:.2f}× faster")
    found = "knee found by kneed" if summary.knee_found else f"no knee found: {summary.knee.reason}"
    rules = summary.rules
    others = ""
    if rules is not None:
        named = [("knee", rules.knee), ("probe", rules.probe), ("auto", rules.auto)]
        others = "; " + ", ".join(f"{rule} → {ref.name}" for rule, ref in named if ref is not None)
    table.caption = (
        f"cut after {cut.name} (cut point {cut.index} of {cut.of}, chosen by {cut.chosen_by}{others}; {found}). "
        f"Results in {out}/"
    )
    if summary.selection is not None:
        print_candidates(summary.selection.candidates, summary.selection.budget, cut, "the auto cut's candidates")
    out_console.print(table)
    if summary.verdict is not None:
        print_verdict(summary.verdict, summary.selection is None or summary.selection.within_budget)
    logged = out / MLFLOW_FOLDER / MLFLOW_JSON
    if logged.is_file():
        print_mlflow(MlflowResult.model_validate_json(logged.read_text(encoding="utf-8")))


def print_mlflow(logged: MlflowResult) -> None:
    """Where the run went in MLflow: the run id and the registered versions (with their ONNX parity)."""
    versions = ", ".join(
        f"{m.version} ({m.role}, ONNX within {m.parity_max_abs_diff:.1e} of torch)" for m in logged.models
    )
    out_console.print(
        f"MLflow: run {logged.run_id} in experiment {logged.experiment!r} at {logged.tracking_uri}; "
        f"registered model {logged.registered_model!r} versions {versions}",
        soft_wrap=True,
    )


CANDIDATE_TABLE_WIDTH = 132
"""The candidates table is printed at least this wide (a log file or a narrow terminal would fold its ten columns)."""


def print_candidates(candidates: Sequence[Candidate], budget: Budget, chosen: CutPointRef | None, title: str) -> None:
    """One row per retrained slim model: where it is cut, its size and speed, its accuracy against the budget."""
    table = Table(title=f"{title}: {budget.description} (threshold {budget.threshold:.2%})")
    for column in ("cut point", "why", "params", "MACs", "CPU ms", "probe", "val acc", "test acc", "F1", "budget"):
        table.add_column(column, justify="left" if column in ("cut point", "why") else "right")
    for c in sorted(candidates, key=lambda c: c.cut_point.index):
        mark = " ◀" if chosen is not None and c.cut_point.index == chosen.index else ""
        table.add_row(
            f"{c.cut_point.index} {c.cut_point.name}{mark}",
            ", ".join(c.reasons),
            human(c.params),
            human(c.macs),
            f"{c.latency_ms:.2f}",
            "–" if c.probe_accuracy is None else f"{c.probe_accuracy:.1%}",
            f"{c.val_accuracy:.2%}",
            f"{c.accuracy:.2%}",
            f"{c.macro_f1:.3f}",
            "within" if c.within_budget else f"{(c.val_accuracy - budget.threshold) * 100:+.1f} pts",
        )
    table.caption = f"base model: validation accuracy {budget.base_val_accuracy:.2%}"
    wide = Console(width=max(out_console.width, CANDIDATE_TABLE_WIDTH), file=out_console.file)
    wide.print(table)


def print_verdict(verdict: str, kept: bool) -> None:
    """The outcome in a sentence, loud when the accuracy budget was not kept."""
    out_console.print(f"[bold green]{verdict}[/]" if kept else f"[bold red]{verdict}[/]", soft_wrap=True)


def print_trained(summary: TrainResult | RetrainResult) -> None:
    """The line of ``train`` and ``retrain``: accuracy, F1, size, best epoch and the checkpoint written."""
    out_console.print(
        f"{summary.stage}: {summary.architecture} test accuracy {summary.accuracy:.2%}, macro F1 "
        f"{summary.macro_f1:.3f}, {human(summary.params)} parameters, best epoch {summary.best_epoch} "
        f"of {summary.epochs_run} → {summary.checkpoint}"
    )


def print_analysis(analysis: AnalyzeResult, out: Path) -> None:
    """The line of ``analyze``: the knee's cut point and whether kneed or the fallback chose it."""
    point, knee = analysis.cut_point, analysis.knee
    how = "kneed" if knee.found else f"fallback ({knee.reason})"
    out_console.print(
        f"knee at cut point {point.index} ({point.name}, {point.channels} channels at "
        f"{point.height}×{point.width}) of {len(analysis.cut_points)}, chosen by {how} → {out}/"
    )


def print_truncation(result: TruncateResult, out: Path) -> None:
    """The line of ``truncate``: where the model was cut and how many parameters are kept."""
    out_console.print(
        f"cut after {result.cut_point.name} (cut point {result.cut_point.index}): "
        f"{human(result.slim_params)} of {human(result.base_params)} parameters kept → {out}"
    )


def print_comparison(result: CompareResult, out: Path) -> None:
    """The line of ``compare``: accuracy, parameters and MACs, base → slim."""
    b, s = result.base, result.slim
    out_console.print(
        f"accuracy {b.accuracy:.2%} → {s.accuracy:.2%}, params {human(b.params)} → "
        f"{human(s.params)}, MACs {human(b.macs)} → {human(s.macs)} → {out}/compare.json"
    )


def print_explanation(result: ExplainResult, out: Path) -> None:
    """The lines of ``explain``: each model's layer and hits on the images, their agreement, the pictures."""
    for key, entry in result.models.items():
        out_console.print(
            f"{key}: {entry.label} at {entry.layer}: {entry.accuracy_on_these_images:.0%} of "
            f"{len(result.images)} images right"
        )
    if result.agreement is not None:
        out_console.print(f"the two models agree on {result.agreement:.0%} of the images")
    out_console.print(f"{len(result.figures)} pictures and explain.json → {out}/")


def print_cut_points(name: str, image_size: int, cut_points: list[dict]) -> None:
    """The table of ``layers``: index, module name, type, channels and spatial size of every cut point."""
    table = Table(title=f"{name} at {image_size} px: {len(cut_points)} cut points")
    for column in ("index", "module name", "type", "channels", "spatial size"):
        table.add_column(column, justify="left" if column in ("module name", "type") else "right")
    for point in cut_points:
        table.add_row(
            str(point["index"]),
            point["name"],
            point["module"],
            str(point["channels"]),
            f"{point['height']}×{point['width']}",
        )
    out_console.print(table)


def print_curve(values: list[float]) -> None:
    """The lines of ``curve``: index and value, tab-separated, ready for a plotting tool."""
    for i, value in enumerate(values):
        out_console.print(f"{i}\t{value:.6f}")


def print_knee(knee: dict) -> None:
    """The line of ``knee``: the knee kneed found, or the fallback's choice and why kneed found none."""
    where = f" ({knee['cut_point']})" if knee["cut_point"] else ""
    if knee["knee"] is not None:
        out_console.print(f"knee at index {knee['chosen']}{where}")
    else:
        out_console.print(
            f"kneed found no knee: {knee['reason']}; fallback chose index {knee['chosen']}{where} by {knee['rule']}"
        )
