"""``layercut export``: a checkpoint as a deployable file (ONNX, TorchScript or ExportedProgram), checked against
torch and timed on the CPU; export.json beside the file."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from layercut.cli import options
from layercut.cli.output import human, out_console, print_result
from layercut.cli.progress import stage_bars
from layercut.contracts import files
from layercut.contracts.configs import ExportConfig
from layercut.contracts.results import ExportResult

RUNTIME_NAMES = {"onnxruntime": "ONNX Runtime", "torchscript": "TorchScript", "exported-program": "ExportedProgram"}


def export(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="the model to export (model.safetensors)"),
    format: str = options.field_option(ExportConfig, "format"),
    out: Optional[Path] = typer.Option(
        None, "--out", help="the file to write; default: beside the checkpoint, ending .onnx, .ts or .pt2"
    ),
    data: Optional[str] = typer.Option(
        None,
        "--data",
        callback=lambda source: None if source is None else options.readable_source(source),
        help="check the logits on the test images of this source (read at the model's image size); without it, on "
        "seeded random images",
    ),
    tolerance: float = options.field_option(ExportConfig, "tolerance"),
    repeats: int = options.field_option(ExportConfig, "latency_repeats", "--repeats"),
    threads: Optional[int] = options.field_option(ExportConfig, "threads"),
    data_root: Optional[str] = options.DATA_ROOT,
    as_json: bool = options.JSON,
    quiet: bool = options.QUIET,
) -> None:
    """Export a model for deployment (ONNX with a dynamic batch axis, TorchScript or a torch.export ExportedProgram),
    check its logits against torch and time it on the CPU beside torch; the classes, image size, mean and std go
    into the file for whoever deploys it."""
    from layercut.local import checkpoint_data
    from layercut.stages.export import default_export_path, export_stage

    config = ExportConfig(format=format, tolerance=tolerance, latency_repeats=repeats, threads=threads)
    target = out if out is not None else default_export_path(checkpoint, config.format)
    with stage_bars(not quiet) as reporter:
        dataset = checkpoint_data(checkpoint, data, data_root, reporter) if data is not None else None
        result = export_stage(checkpoint, target, config, dataset, reporter)
    if as_json:
        print_result(result)
    else:
        print_export(result)


def _ms(result: ExportResult, label: str) -> str:
    measured = result.latency.get(label)
    return f"{measured.median_ms:.2f} ms" if measured is not None else "—"


def print_export(result: ExportResult) -> None:
    """The table of ``export``: the file, its size, its parity with torch and its CPU latency beside torch's."""
    parity = result.parity
    table = Table(title=f"{result.architecture} exported as {result.format}", show_header=False)
    table.add_column("", justify="left")
    table.add_column("", justify="left")
    table.add_row("format", result.format + (f" (opset {result.opset})" if result.opset is not None else ""))
    table.add_row("file", result.file)
    table.add_row("size", human(result.bytes) + "B")
    table.add_row(
        "max |diff| vs torch",
        f"{parity.max_abs_diff:.2e} (≤ {parity.tolerance:g}, {parity.images} {parity.images_from} images)",
    )
    runtime = next((m.runtime for m in result.latency.values() if m.runtime is not None), None)
    name = RUNTIME_NAMES.get(runtime or "", runtime or "")
    for measured in result.latency.values():
        if measured.runtime is None:
            continue
        batch = measured.batch_size
        table.add_row(
            f"{name} CPU latency, batch {batch}", f"{measured.median_ms:.2f} ms (torch {_ms(result, f'cpu_b{batch}')})"
        )
    table.caption = f"{result.threads} CPU thread(s); {files.EXPORT_JSON} beside the file"
    out_console.print(table)
