"""``layercut run``: the whole pipeline in this process (train → analyze → the cut: select under the accuracy
budget, or truncate → retrain → compare → explain), its options on the command line or in a --config file."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from pydantic import ValidationError

from layercut.cli import options
from layercut.cli.config_file import CONFIG
from layercut.cli.output import fail, print_result, print_run
from layercut.cli.parsing import data_config, parse_methods, train_config
from layercut.cli.progress import stage_bars
from layercut.contracts.configs import (
    EXPORT_FORMATS,
    AnalyzeConfig,
    CompareConfig,
    ExplainConfig,
    ExportConfig,
    MlflowConfig,
    SelectConfig,
    SweepConfig,
    TruncateConfig,
)
from layercut.contracts.errors import LayercutError, first_error


def sweep_config(cuts: str, max_drop: float, min_accuracy: float | None) -> SweepConfig:
    """The sweep of ``--sweep CUTS``; a wrong list is named as --sweep (the sweep command calls it --cuts)."""
    try:
        return SweepConfig(cuts=cuts, max_drop=max_drop, min_accuracy=min_accuracy)
    except ValidationError as exc:
        if any(error["loc"] == ("cuts",) for error in exc.errors()):
            raise LayercutError(f"--sweep: {first_error(exc).removeprefix('cuts: ')}") from None
        raise


def mlflow_config(uri: str | None, experiment: str, registered_model: str | None) -> MlflowConfig | None:
    """Where to log the run: ``--mlflow``, else LAYERCUT_MLFLOW_TRACKING_URI, else nowhere."""
    from layercut.settings import get_settings

    uri = uri or get_settings().mlflow_tracking_uri
    if not uri:
        return None
    try:
        return MlflowConfig(tracking_uri=uri, experiment=experiment, registered_model=registered_model)
    except ValidationError as exc:
        raise LayercutError(f"--mlflow: {first_error(exc)}") from None


def run(
    config_file: Optional[Path] = CONFIG,
    out: Path = typer.Option(
        Path("layercut-run"),
        "--out",
        help="output folder (base/, analysis/, select/, slim/, compare/, explain/, run.json, report.html)",
    ),
    data: str = options.DATA_SOURCE,
    arch: str = options.ARCH,
    image_size: int = options.IMAGE_SIZE,
    epochs: int = options.EPOCHS,
    retrain_epochs: Optional[int] = typer.Option(
        None, "--retrain-epochs", help="epochs for the slim model (default: --epochs)"
    ),
    batch_size: int = options.BATCH_SIZE,
    optimizer: str = options.OPTIMIZER,
    lr: Optional[float] = options.LEARNING_RATE,
    weight_decay: float = options.WEIGHT_DECAY,
    schedule: str = options.SCHEDULE,
    label_smoothing: float = options.LABEL_SMOOTHING,
    augment: bool = options.AUGMENT,
    patience: int = options.PATIENCE,
    pretrained: bool = options.PRETRAINED,
    cut: str = options.CUT,
    max_drop: float = options.MAX_DROP,
    min_accuracy: Optional[float] = options.MIN_ACCURACY,
    max_retrains: int = options.MAX_RETRAINS,
    sweep: Optional[str] = typer.Option(
        None,
        "--sweep",
        help="also retrain a slim model at these cut points (all | every:K | 3,5,7) and chart the whole trade-off",
    ),
    curve: str = options.KNEE_CURVE,
    probes_per_class: int = options.PROBES_PER_CLASS,
    max_probes: int = options.MAX_PROBES,
    gbp_rule: str = options.GBP_RULE,
    memory_budget: Optional[int] = options.MEMORY_BUDGET,
    retrain_from_scratch: bool = typer.Option(
        False, "--retrain-from-scratch", help="re-initialise the slim model instead of fine-tuning its kept weights"
    ),
    explain_methods: str = typer.Option(
        "default", "--explain-methods", help="explanations of base and slim, " + options.METHODS_HELP
    ),
    explain_images: int = options.field_option(ExplainConfig, "images", "--explain-images"),
    seed: int = options.SEED,
    classes: Optional[str] = options.CLASSES,
    skip_unreadable: bool = options.SKIP_UNREADABLE,
    allow_mixed_sizes: bool = options.ALLOW_MIXED_SIZES,
    data_root: Optional[str] = options.DATA_ROOT,
    device: str = options.DEVICE,
    head_init: str = options.HEAD_INIT,
    export: Optional[str] = typer.Option(
        None,
        "--export",
        help="also export the slim model as a deployable file: onnx | torchscript | exported-program (checked "
        "against torch on the test images, timed on the CPU) → export/",
    ),
    onnxruntime: bool = options.ONNXRUNTIME,
    mlflow: Optional[str] = typer.Option(
        None,
        "--mlflow",
        metavar="URI",
        help="log the run to this MLflow tracking server and register base and slim as ONNX model versions "
        "(default: LAYERCUT_MLFLOW_TRACKING_URI; needs layercut[mlflow])",
    ),
    checkpoint: Optional[Path] = typer.Option(
        None,
        "--checkpoint",
        help="start from this model (trained elsewhere: `layercut import` makes one) instead of training a base; "
        "its own architecture and image size are used",
        exists=True,
        dir_okay=False,
    ),
    mlflow_experiment: str = options.field_option(MlflowConfig, "experiment", "--mlflow-experiment"),
    mlflow_model: Optional[str] = options.field_option(MlflowConfig, "registered_model", "--mlflow-model"),
    as_json: bool = options.JSON,
    quiet: bool = options.QUIET,
) -> None:
    """Run the whole pipeline: train → analyze → cut (by default the smallest slim model within the accuracy
    budget, confirmed by retraining) → compare → explain. With --checkpoint, a model trained elsewhere is the base
    and nothing is trained before the analysis."""
    data_settings = data_config(data, image_size, seed, classes, skip_unreadable, allow_mixed_sizes, data_root)
    train_settings = train_config(
        epochs,
        batch_size,
        optimizer,
        lr,
        weight_decay,
        schedule,
        label_smoothing,
        augment,
        patience,
        seed,
        device,
        head_init,
    )
    explain_settings = ExplainConfig(
        methods=parse_methods(explain_methods, "--explain-methods"), images=explain_images, device=device
    )
    analyze_settings = AnalyzeConfig(
        probes_per_class=probes_per_class,
        max_probes=max_probes,
        gbp_rule=gbp_rule,
        curve=curve,
        memory_budget_mb=memory_budget,
        device=device,
    )
    select_settings = SelectConfig(max_drop=max_drop, min_accuracy=min_accuracy, max_retrains=max_retrains)
    sweep_settings = sweep_config(sweep, max_drop, min_accuracy) if sweep is not None else None
    if export is not None and export not in EXPORT_FORMATS:
        fail(f"--export takes {', '.join(EXPORT_FORMATS)} (got {export!r})")
    export_settings = ExportConfig(format=export) if export is not None else None
    mlflow_settings = mlflow_config(mlflow, mlflow_experiment, mlflow_model)
    with stage_bars(not quiet) as reporter:
        reporter.update("start", 0.0, "loading torch and the stages")
        from layercut.local import run_pipeline  # only now: every option above is checked in well under a second

        reporter.update("start", 1.0, "checking the architecture and the cut")
        summary = run_pipeline(
            data_settings,
            arch,
            out,
            train=train_settings,
            retrain=train_settings.model_copy(update={"epochs": retrain_epochs or epochs}),
            analyze=analyze_settings,
            cut=TruncateConfig(cut=cut),
            select=select_settings,
            sweep=sweep_settings,
            compare=CompareConfig(device=device, onnxruntime=onnxruntime),
            explain=explain_settings,
            pretrained=pretrained,
            retrain_from_scratch=retrain_from_scratch,
            reporter=reporter,
            export=export_settings,
            mlflow=mlflow_settings,
            checkpoint=checkpoint,
        )
    if as_json:
        print_result(summary)
    else:
        print_run(summary, out)
