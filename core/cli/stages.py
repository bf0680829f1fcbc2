"""One command per stage: ``train``, ``analyze``, ``truncate``, ``retrain``, ``select``, ``sweep``, ``compare`` and
``explain``.

Each reads and writes files, so the stages can be run one at a time and inspected in between; a command that
starts from a checkpoint reads the images the model was trained on unless --data names another source.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Optional

import typer

from layercut.cli import options
from layercut.cli.output import (
    print_analysis,
    print_candidates,
    print_comparison,
    print_explanation,
    print_result,
    print_trained,
    print_truncation,
    print_verdict,
)
from layercut.cli.parsing import data_config, parse_methods, parse_target, train_config
from layercut.cli.progress import stage_bars
from layercut.contracts.configs import (
    AnalyzeConfig,
    CompareConfig,
    ExplainConfig,
    SelectConfig,
    SweepConfig,
    TruncateConfig,
)

TRAINED_OUT_HELP = "output folder: model.safetensors, metrics.json, pictures"


def _class_names_of(checkpoint: Path) -> Callable[[], list[str]]:
    """The class names of a checkpoint, read only when asked for."""

    def class_names() -> list[str]:
        from layercut.stages.checkpoint import read_spec

        return list(read_spec(checkpoint).classes)

    return class_names


WITHOUT_HISTORY = frozenset({"history"})
"""What the JSON output of train and retrain leaves to metrics.json: the epoch-by-epoch history."""
WITHOUT_MATRIX = frozenset({"similarity_matrix"})
"""What the JSON output of analyze leaves to analysis.json: the similarity matrix."""


def train(
    out: Path = typer.Option(..., "--out", help=TRAINED_OUT_HELP),
    data: str = options.DATA_SOURCE,
    arch: str = options.ARCH,
    image_size: int = options.IMAGE_SIZE,
    epochs: int = options.EPOCHS,
    batch_size: int = options.BATCH_SIZE,
    optimizer: str = options.OPTIMIZER,
    lr: Optional[float] = options.LEARNING_RATE,
    weight_decay: float = options.WEIGHT_DECAY,
    schedule: str = options.SCHEDULE,
    label_smoothing: float = options.LABEL_SMOOTHING,
    augment: bool = options.AUGMENT,
    patience: int = options.PATIENCE,
    pretrained: bool = options.PRETRAINED,
    seed: int = options.SEED,
    classes: Optional[str] = options.CLASSES,
    skip_unreadable: bool = options.SKIP_UNREADABLE,
    allow_mixed_sizes: bool = options.ALLOW_MIXED_SIZES,
    data_root: Optional[str] = options.DATA_ROOT,
    device: str = options.DEVICE,
    as_json: bool = options.JSON,
    quiet: bool = options.QUIET,
) -> None:
    """Train a base model and keep the epoch with the best validation accuracy."""
    from layercut.local import read_data
    from layercut.stages.stages import train_stage

    data_settings = data_config(data, image_size, seed, classes, skip_unreadable, allow_mixed_sizes, data_root)
    config = train_config(
        epochs, batch_size, optimizer, lr, weight_decay, schedule, label_smoothing, augment, patience, seed, device
    )
    with stage_bars(not quiet) as reporter:
        dataset = read_data(data_settings, reporter)
        summary = train_stage(dataset, data_settings, arch, config, out, pretrained=pretrained, reporter=reporter)
    if as_json:
        print_result(summary, WITHOUT_HISTORY)
    else:
        print_trained(summary)


def analyze(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="a trained model (model.safetensors)"),
    out: Path = typer.Option(..., "--out", help="output folder: analysis.json, gbp_maps.npz, pictures"),
    data: Optional[str] = options.CHECKPOINT_DATA,
    probes_per_class: int = options.PROBES_PER_CLASS,
    max_probes: int = options.MAX_PROBES,
    probe_seed: int = options.field_option(AnalyzeConfig, "probe_seed"),
    gbp_rule: str = options.GBP_RULE,
    grayscale: bool = options.field_option(AnalyzeConfig, "grayscale"),
    data_range: float = options.SSIM_DATA_RANGE,
    curve: str = options.KNEE_CURVE,
    sensitivity: float = options.KNEE_SENSITIVITY,
    batch_size: int = options.field_option(AnalyzeConfig, "batch_size"),
    memory_budget: Optional[int] = options.MEMORY_BUDGET,
    data_root: Optional[str] = options.DATA_ROOT,
    device: str = options.DEVICE,
    as_json: bool = options.JSON,
    quiet: bool = options.QUIET,
) -> None:
    """GBP maps of every cut point, their SSIM matrix, the adjacent and cut curves, and the knee."""
    from layercut.stages.stages import analyze_stage

    config = AnalyzeConfig(
        probes_per_class=probes_per_class,
        max_probes=max_probes,
        probe_seed=probe_seed,
        gbp_rule=gbp_rule,
        grayscale=grayscale,
        ssim_data_range=data_range,
        curve=curve,
        knee_sensitivity=sensitivity,
        batch_size=batch_size,
        memory_budget_mb=memory_budget,
        device=device,
    )
    with stage_bars(not quiet) as reporter:
        from layercut.local import checkpoint_data

        dataset = checkpoint_data(checkpoint, data, data_root, reporter)
        analysis = analyze_stage(checkpoint, dataset, config, out, reporter=reporter)
    if as_json:
        print_result(analysis, WITHOUT_MATRIX)
    else:
        print_analysis(analysis, out)


def truncate(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="the trained base model"),
    out: Path = typer.Option(..., "--out", help="where to write the slim checkpoint (.safetensors)"),
    cut: str = options.TRUNCATE_CUT,
    analysis: Optional[Path] = typer.Option(None, "--analysis", help="analysis.json of this model, for --cut knee"),
    dropout: float = options.DROPOUT,
    as_json: bool = options.JSON,
) -> None:
    """Keep the layers up to a cut point with their weights and attach a new head (GAP, dropout, linear)."""
    from layercut.stages.stages import truncate_stage

    result = truncate_stage(checkpoint, TruncateConfig(cut=cut, dropout=dropout), out, analysis)
    if as_json:
        print_result(result)
    else:
        print_truncation(result, out)


def retrain(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="a slim model from `layercut truncate`"),
    out: Path = typer.Option(..., "--out", help=TRAINED_OUT_HELP),
    data: Optional[str] = options.CHECKPOINT_DATA,
    from_scratch: bool = typer.Option(
        False, "--from-scratch", help="re-initialise instead of fine-tuning the kept weights"
    ),
    epochs: int = options.EPOCHS,
    batch_size: int = options.BATCH_SIZE,
    optimizer: str = options.OPTIMIZER,
    lr: Optional[float] = options.LEARNING_RATE,
    weight_decay: float = options.WEIGHT_DECAY,
    schedule: str = options.SCHEDULE,
    label_smoothing: float = options.LABEL_SMOOTHING,
    augment: bool = options.AUGMENT,
    patience: int = options.PATIENCE,
    seed: int = options.SEED,
    data_root: Optional[str] = options.DATA_ROOT,
    device: str = options.DEVICE,
    head_init: str = options.HEAD_INIT,
    as_json: bool = options.JSON,
    quiet: bool = options.QUIET,
) -> None:
    """Train a slim model: fine-tune from the kept weights (default) or from scratch."""
    from layercut.stages.stages import retrain_stage

    config = train_config(
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
    with stage_bars(not quiet) as reporter:
        from layercut.local import checkpoint_data

        dataset = checkpoint_data(checkpoint, data, data_root, reporter)
        summary = retrain_stage(checkpoint, dataset, config, out, from_scratch=from_scratch, reporter=reporter)
    if as_json:
        print_result(summary, WITHOUT_HISTORY)
    else:
        print_trained(summary)


def select(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="the trained base model"),
    analysis: Path = typer.Option(..., "--analysis", help="analysis.json of this model (its depth probes and knee)"),
    out: Path = typer.Option(
        ..., "--out", help="output folder: select.json, trade_off.png, candidates/, the chosen model.safetensors"
    ),
    data: Optional[str] = options.CHECKPOINT_DATA,
    max_drop: float = options.MAX_DROP,
    min_accuracy: Optional[float] = options.MIN_ACCURACY,
    max_retrains: int = options.MAX_RETRAINS,
    dropout: float = options.DROPOUT,
    from_scratch: bool = typer.Option(
        False, "--from-scratch", help="re-initialise each candidate instead of fine-tuning its kept weights"
    ),
    epochs: int = options.EPOCHS,
    batch_size: int = options.BATCH_SIZE,
    optimizer: str = options.OPTIMIZER,
    lr: Optional[float] = options.LEARNING_RATE,
    weight_decay: float = options.WEIGHT_DECAY,
    schedule: str = options.SCHEDULE,
    label_smoothing: float = options.LABEL_SMOOTHING,
    augment: bool = options.AUGMENT,
    patience: int = options.PATIENCE,
    seed: int = options.SEED,
    data_root: Optional[str] = options.DATA_ROOT,
    device: str = options.DEVICE,
    head_init: str = options.HEAD_INIT,
    as_json: bool = options.JSON,
    quiet: bool = options.QUIET,
) -> None:
    """The auto cut: the smallest slim model whose validation accuracy after retraining stays within the budget
    (candidates from the depth probes and the knee, retrained smallest first until the answer is certain)."""
    from layercut.stages.select import select_stage

    config = SelectConfig(max_drop=max_drop, min_accuracy=min_accuracy, max_retrains=max_retrains)
    training = train_config(
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
    with stage_bars(not quiet) as reporter:
        from layercut.local import checkpoint_data

        dataset = checkpoint_data(checkpoint, data, data_root, reporter)
        result = select_stage(checkpoint, dataset, analysis, config, training, out, dropout, from_scratch, reporter)
    if as_json:
        print_result(result)
    else:
        print_candidates(result.candidates, result.budget, result.cut_point, f"auto cut → {out}/")
        print_verdict(result.verdict, result.within_budget)


def sweep(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="the trained base model"),
    out: Path = typer.Option(..., "--out", help="output folder: sweep.json, trade_off.png, candidates/"),
    cuts: str = options.SWEEP_CUTS,
    analysis: Optional[Path] = typer.Option(
        None, "--analysis", help="analysis.json of this model, to mark the knee and the probe curve on the chart"
    ),
    data: Optional[str] = options.CHECKPOINT_DATA,
    max_drop: float = options.MAX_DROP,
    min_accuracy: Optional[float] = options.MIN_ACCURACY,
    dropout: float = options.DROPOUT,
    from_scratch: bool = typer.Option(
        False, "--from-scratch", help="re-initialise each slim model instead of fine-tuning its kept weights"
    ),
    epochs: int = options.EPOCHS,
    batch_size: int = options.BATCH_SIZE,
    optimizer: str = options.OPTIMIZER,
    lr: Optional[float] = options.LEARNING_RATE,
    weight_decay: float = options.WEIGHT_DECAY,
    schedule: str = options.SCHEDULE,
    label_smoothing: float = options.LABEL_SMOOTHING,
    augment: bool = options.AUGMENT,
    patience: int = options.PATIENCE,
    seed: int = options.SEED,
    data_root: Optional[str] = options.DATA_ROOT,
    device: str = options.DEVICE,
    head_init: str = options.HEAD_INIT,
    as_json: bool = options.JSON,
    quiet: bool = options.QUIET,
) -> None:
    """Retrain a slim model at each chosen cut point with the same budget: the whole accuracy/size trade-off on
    one chart (sweep.json and trade_off.png)."""
    from layercut.stages.checkpoint import load_checkpoint
    from layercut.stages.select import sweep_indices, sweep_stage

    config = SweepConfig(cuts=cuts, max_drop=max_drop, min_accuracy=min_accuracy, dropout=dropout)
    training = train_config(
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
    sweep_indices(load_checkpoint(checkpoint)[0], config.cuts)  # a wrong cut point name fails before the data loads
    with stage_bars(not quiet) as reporter:
        from layercut.local import checkpoint_data

        dataset = checkpoint_data(checkpoint, data, data_root, reporter)
        result = sweep_stage(checkpoint, dataset, config, training, out, analysis, from_scratch, reporter)
    if as_json:
        print_result(result)
    else:
        print_candidates(
            result.candidates, result.budget, result.smallest_within_budget, f"sweep → {out}/{result.chart}"
        )


def compare(
    base: Path = typer.Option(..., "--base", help="the trained base model"),
    slim: Path = typer.Option(..., "--slim", help="the retrained slim model"),
    out: Path = typer.Option(..., "--out", help="output folder: compare.json, compare.png"),
    data: Optional[str] = options.CHECKPOINT_DATA,
    repeats: int = options.field_option(CompareConfig, "latency_repeats", "--repeats"),
    onnxruntime: bool = options.ONNXRUNTIME,
    data_root: Optional[str] = options.DATA_ROOT,
    device: str = options.DEVICE,
    as_json: bool = options.JSON,
    quiet: bool = options.QUIET,
) -> None:
    """Accuracy, macro-F1, parameters, MACs, checkpoint size and latency of two models on the same test split."""
    from layercut.stages.stages import compare_stage

    config = CompareConfig(latency_repeats=repeats, device=device, onnxruntime=onnxruntime)
    with stage_bars(not quiet) as reporter:
        from layercut.local import checkpoint_data

        dataset = checkpoint_data(base, data, data_root, reporter)
        result = compare_stage(base, slim, dataset, config, out, reporter)
    if as_json:
        print_result(result)
    else:
        print_comparison(result, out)


def explain(
    model: Path = typer.Option(..., "--model", help="the trained model to explain (model.safetensors)"),
    out: Path = typer.Option(..., "--out", help="output folder: explain.json, explain_maps.npz, pictures"),
    compare_with: Optional[Path] = typer.Option(
        None,
        "--compare-with",
        help="a second model (e.g. the slim one) explained on the same images, side by side",
    ),
    data: Optional[str] = options.CHECKPOINT_DATA,
    methods: str = typer.Option("default", "--methods", help=options.METHODS_HELP),
    layer: Optional[str] = options.field_option(ExplainConfig, "layer", more_help="; see `layercut layers`"),
    feature_layer: Optional[str] = options.field_option(ExplainConfig, "feature_layer"),
    target: str = options.field_option(ExplainConfig, "target", more_help=" or name"),
    images: int = options.field_option(ExplainConfig, "images"),
    feature_maps: int = options.field_option(ExplainConfig, "feature_maps"),
    edges: bool = options.field_option(ExplainConfig, "edges"),
    gbp_rule: str = options.field_option(ExplainConfig, "gbp_rule"),
    batch_size: int = options.field_option(ExplainConfig, "batch_size"),
    seed: int = options.field_option(ExplainConfig, "seed"),
    data_root: Optional[str] = options.DATA_ROOT,
    device: str = options.DEVICE,
    as_json: bool = options.JSON,
    quiet: bool = options.QUIET,
) -> None:
    """Grad-CAM, Grad-CAM++, Layer-CAM, Eigen-CAM, Score-CAM, guided backprop, guided Grad-CAM, saliency,
    feature maps and receptive fields for test images; with --compare-with, both models side by side."""
    from layercut.stages.explain import explain_stage

    config = ExplainConfig(
        methods=parse_methods(methods),
        layer=layer,
        feature_layer=feature_layer,
        target=parse_target(target, _class_names_of(model)),
        images=images,
        feature_maps=feature_maps,
        edges=edges,
        gbp_rule=gbp_rule,
        batch_size=batch_size,
        seed=seed,
        device=device,
    )
    with stage_bars(not quiet) as reporter:
        from layercut.local import checkpoint_data

        dataset = checkpoint_data(model, data, data_root, reporter)
        result = explain_stage(model, dataset, config, out, reporter=reporter, compare_checkpoint=compare_with)
    if as_json:
        print_result(result)
    else:
        print_explanation(result, out)
