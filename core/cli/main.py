"""``layercut``: run the slimming pipeline, or any one stage, from the command line.

Every command reads and writes files, so stages can be run one at a time and inspected in between.
Errors print one message and exit non-zero; set LAYERCUT_DEBUG=1 to see the traceback too.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from layercut.cli.progress import err_console, stage_bars
from layercut.cli.service import keys_app, migrate, serve
from layercut.contracts.configs import (
    DEFAULT_EXPLAIN_METHODS,
    EXPLAIN_METHODS,
    AnalyzeConfig,
    CompareConfig,
    DataConfig,
    ExplainConfig,
    TrainConfig,
    TruncateConfig,
)
from layercut.contracts.errors import Cancelled, LayercutError

app = typer.Typer(
    name="layercut",
    help="Find where a trained CNN stops learning new features (guided backprop + SSIM + knee), "
    "cut it there, retrain the slim model and compare it with the original.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
out_console = Console()

# Options shared by several commands.
DataOpt = Annotated[
    str,
    typer.Option(
        "--data",
        help="textures | digits | a torchvision dataset name (cifar10 …) | a folder: one sub-folder per class (optionally inside train/ val/ test/), or flat {label}_{id}.jpg files with --classes",
    ),
]
ImageSizeOpt = Annotated[int, typer.Option("--image-size", help="square input size in pixels (at least 32)")]
ClassesOpt = Annotated[
    Optional[str],
    typer.Option(
        "--classes", help="class names, comma-separated or a text file with one per line (needed for a flat folder)"
    ),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="seed for splits, initialisation and augmentation")]
SkipOpt = Annotated[
    bool,
    typer.Option(
        "--skip-unreadable", help="skip files that cannot be decoded (their count is reported) instead of stopping"
    ),
]
MixedOpt = Annotated[
    bool,
    typer.Option(
        "--allow-mixed-sizes", help="accept source images of different sizes (each is resized to --image-size)"
    ),
]
DataRootOpt = Annotated[
    Optional[str],
    typer.Option(
        "--data-root",
        help="where torchvision datasets are stored (default $LAYERCUT_DATA_ROOT or ./layercut-data/datasets)",
    ),
]
EpochsOpt = Annotated[int, typer.Option("--epochs", help="maximum training epochs (early stopping may end sooner)")]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="training batch size")]
OptimizerOpt = Annotated[str, typer.Option("--optimizer", help="adam (AdamW) or sgd (momentum 0.9, Nesterov)")]
LrOpt = Annotated[
    Optional[float], typer.Option("--lr", help="initial learning rate (default: 3e-4 for adam, 0.01 for sgd)")
]
WdOpt = Annotated[float, typer.Option("--weight-decay", help="weight decay")]
ScheduleOpt = Annotated[str, typer.Option("--schedule", help="cosine | step | none")]
SmoothingOpt = Annotated[float, typer.Option("--label-smoothing", help="label smoothing factor")]
AugmentOpt = Annotated[bool, typer.Option("--augment/--no-augment", help="random flips and shifts while training")]
PatienceOpt = Annotated[
    int, typer.Option("--patience", help="stop after this many epochs without a better validation accuracy (0: never)")
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto | cpu | cuda")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON object on stdout instead of a table")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")]


def _fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _classes(value: str | None) -> list[str] | None:
    if value is None:
        return None
    path = Path(value)
    if path.is_file():
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    else:
        names = [name.strip() for name in value.split(",") if name.strip()]
    if len(names) < 2:
        _fail(f"--classes needs at least two class names, got {names}")
    return names


def _data_config(
    data: str, image_size: int, seed: int, classes: str | None, skip: bool, mixed: bool, data_root: str | None
) -> DataConfig:
    return DataConfig(
        source=data,
        image_size=image_size,
        seed=seed,
        classes=_classes(classes),
        skip_unreadable=skip,
        allow_mixed_sizes=mixed,
        data_root=data_root,
    )


def _train_config(
    epochs, batch_size, optimizer, lr, weight_decay, schedule, label_smoothing, augment, patience, seed, device
) -> TrainConfig:
    return TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        optimizer=optimizer,
        lr=lr,
        weight_decay=weight_decay,
        schedule=schedule,
        label_smoothing=label_smoothing,
        augment=augment,
        patience=patience or None,
        seed=seed,
        device=device,
    )


def _print_json(payload: dict) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")


def _load_data_for(checkpoint: Path, data: str | None, reporter, data_root: str | None = None):
    """The dataset a checkpoint was trained on, unless --data names another source."""
    from layercut.stages.checkpoint import read_spec
    from layercut.stages.stages import load_data

    spec = read_spec(checkpoint)
    config = DataConfig.model_validate(spec.data) if spec.data else DataConfig(image_size=spec.image_size)
    update = {"image_size": spec.image_size}
    if data is not None:
        update["source"] = data
    if data_root is not None:
        update["data_root"] = data_root
    return load_data(config.model_copy(update=update), reporter)


def _human(n: float) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.3g}{unit}"
        n /= 1000
    return f"{n:.3g}P"


def _methods(value: str, option: str = "--methods") -> list[str]:
    """Explanation methods from a comma-separated list, "default" (all but Score-CAM) or "all"; unknown names end
    the command with a message."""
    if value.strip() == "all":
        return list(EXPLAIN_METHODS)
    if value.strip() == "default":
        return list(DEFAULT_EXPLAIN_METHODS)
    names = [name.strip() for name in value.split(",") if name.strip()]
    bad = [name for name in names if name not in EXPLAIN_METHODS]
    if bad or not names:
        _fail(
            f"{option}: unknown method(s) {', '.join(bad) or repr(value)}; choose from: default, all, {', '.join(EXPLAIN_METHODS)}"
        )
    return names


def _target(value: str, checkpoint: Path) -> str | int:
    """'predicted', 'all', a class index, or a class name of the model (turned into its index)."""
    from layercut.stages.checkpoint import read_spec

    if value in ("predicted", "all"):
        return value
    if value.isdigit():
        return int(value)
    classes = read_spec(checkpoint).classes
    if value in classes:
        return classes.index(value)
    _fail(f"--target must be predicted, all, a class index or a class name ({', '.join(classes)}); got {value!r}")


@app.command()
def run(
    out: Annotated[
        Path, typer.Option("--out", help="output folder (base/, analysis/, slim/, compare/, explain/, run.json)")
    ] = Path("layercut-data/run"),
    data: DataOpt = "textures",
    arch: Annotated[str, typer.Option("--arch", help="architecture (see `layercut layers --help`)")] = "vgg11",
    image_size: ImageSizeOpt = 64,
    epochs: EpochsOpt = 5,
    retrain_epochs: Annotated[
        Optional[int], typer.Option("--retrain-epochs", help="epochs for the slim model (default: --epochs)")
    ] = None,
    batch_size: BatchOpt = 32,
    optimizer: OptimizerOpt = "adam",
    lr: LrOpt = None,
    weight_decay: WdOpt = 1e-4,
    schedule: ScheduleOpt = "cosine",
    label_smoothing: SmoothingOpt = 0.0,
    augment: AugmentOpt = True,
    patience: PatienceOpt = 5,
    pretrained: Annotated[
        bool,
        typer.Option(
            "--pretrained", help="start from torchvision's ImageNet weights (must be in the local TORCH_HOME cache)"
        ),
    ] = False,
    cut: Annotated[
        str, typer.Option("--cut", help="'knee' or a cut point index or name (see `layercut layers`)")
    ] = "knee",
    curve: Annotated[
        str, typer.Option("--curve", help="curve the knee is picked on: cut (the paper's) or adjacent")
    ] = "cut",
    probes_per_class: Annotated[
        int, typer.Option("--probes-per-class", help="probe images per class for the analysis")
    ] = 4,
    max_probes: Annotated[int, typer.Option("--max-probes", help="at most this many probe images")] = 64,
    gbp_rule: Annotated[
        str,
        typer.Option("--gbp-rule", help="guided-backprop rule for non-ReLU activations: relu | derivative | ungated"),
    ] = "relu",
    retrain_from_scratch: Annotated[
        bool,
        typer.Option(
            "--retrain-from-scratch", help="re-initialise the slim model instead of fine-tuning its kept weights"
        ),
    ] = False,
    explain_methods: Annotated[
        str,
        typer.Option(
            "--explain-methods",
            help="explanations of base and slim, comma-separated (see `layercut explain --help`); default: all but scorecam, which costs one forward pass per channel and image",
        ),
    ] = "default",
    explain_images: Annotated[int, typer.Option("--explain-images", help="test images explained by base and slim")] = 8,
    seed: SeedOpt = 0,
    classes: ClassesOpt = None,
    skip_unreadable: SkipOpt = False,
    allow_mixed_sizes: MixedOpt = False,
    data_root: DataRootOpt = None,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run the whole pipeline: train → analyze → truncate at the knee → retrain → compare → explain."""
    from layercut.local import run_pipeline

    data_config = _data_config(data, image_size, seed, classes, skip_unreadable, allow_mixed_sizes, data_root)
    train_config = _train_config(
        epochs, batch_size, optimizer, lr, weight_decay, schedule, label_smoothing, augment, patience, seed, device
    )
    retrain_config = train_config.model_copy(update={"epochs": retrain_epochs or epochs})
    analyze_config = AnalyzeConfig(
        probes_per_class=probes_per_class, max_probes=max_probes, gbp_rule=gbp_rule, curve=curve, device=device
    )
    with stage_bars(not quiet) as reporter:
        summary = run_pipeline(
            data_config,
            arch,
            out,
            train=train_config,
            retrain=retrain_config,
            analyze=analyze_config,
            cut=TruncateConfig(cut=cut),
            compare=CompareConfig(device=device),
            explain=ExplainConfig(
                methods=_methods(explain_methods, "--explain-methods"), images=explain_images, device=device
            ),
            pretrained=pretrained,
            retrain_from_scratch=retrain_from_scratch,
            reporter=reporter,
        )
    if as_json:
        _print_json(summary)
        return
    _print_run_table(summary, out)


def _print_run_table(summary: dict, out: Path) -> None:
    base, slim, cut = summary["base"], summary["slim"], summary["cut_point"]
    table = Table(title=f"{summary['architecture']} on {summary['data']['source']}: base vs slim")
    for column in ("", "base", "slim", "change"):
        table.add_column(column, justify="right" if column else "left")
    table.add_row(
        "test accuracy",
        f"{base['accuracy']:.2%}",
        f"{slim['accuracy']:.2%}",
        f"{(slim['accuracy'] - base['accuracy']) * 100:+.1f} pts",
    )
    table.add_row(
        "macro F1", f"{base['macro_f1']:.3f}", f"{slim['macro_f1']:.3f}", f"{slim['macro_f1'] - base['macro_f1']:+.3f}"
    )
    table.add_row(
        "parameters", _human(base["params"]), _human(slim["params"]), f"{slim['params'] / base['params']:.1%} kept"
    )
    table.add_row("MACs / image", _human(base["macs"]), _human(slim["macs"]), f"{slim['macs'] / base['macs']:.1%} kept")
    table.add_row(
        "checkpoint",
        _human(base["checkpoint_bytes"]) + "B",
        _human(slim["checkpoint_bytes"]) + "B",
        f"{slim['checkpoint_bytes'] / base['checkpoint_bytes']:.1%} kept",
    )
    for key in base["latency_ms"]:
        b, s = base["latency_ms"][key], slim["latency_ms"].get(key)
        if s is None:
            continue
        device, batch = key.split("_b")
        table.add_row(f"{device.upper()} latency, batch {batch}", f"{b:.2f} ms", f"{s:.2f} ms", f"{b / s:.2f}× faster")
    found = "knee found by kneed" if summary["knee_found"] else f"no knee found: {summary['knee'].get('reason')}"
    table.caption = (
        f"cut after {cut['name']} (cut point {cut['index']} of {cut['of']}, {cut['chosen_by']}; {found}). "
        f"Results in {out}/"
    )
    out_console.print(table)


@app.command()
def train(
    out: Annotated[Path, typer.Option("--out", help="output folder: model.safetensors, metrics.json, pictures")],
    data: DataOpt = "textures",
    arch: Annotated[str, typer.Option("--arch", help="architecture")] = "vgg11",
    image_size: ImageSizeOpt = 64,
    epochs: EpochsOpt = 5,
    batch_size: BatchOpt = 32,
    optimizer: OptimizerOpt = "adam",
    lr: LrOpt = None,
    weight_decay: WdOpt = 1e-4,
    schedule: ScheduleOpt = "cosine",
    label_smoothing: SmoothingOpt = 0.0,
    augment: AugmentOpt = True,
    patience: PatienceOpt = 5,
    pretrained: Annotated[bool, typer.Option("--pretrained", help="start from cached ImageNet weights")] = False,
    seed: SeedOpt = 0,
    classes: ClassesOpt = None,
    skip_unreadable: SkipOpt = False,
    allow_mixed_sizes: MixedOpt = False,
    data_root: DataRootOpt = None,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train a base model and keep the epoch with the best validation accuracy."""
    from layercut.stages.stages import load_data, train_stage

    data_config = _data_config(data, image_size, seed, classes, skip_unreadable, allow_mixed_sizes, data_root)
    config = _train_config(
        epochs, batch_size, optimizer, lr, weight_decay, schedule, label_smoothing, augment, patience, seed, device
    )
    with stage_bars(not quiet) as reporter:
        dataset = load_data(data_config, reporter)
        summary = train_stage(dataset, data_config, arch, config, out, pretrained=pretrained, reporter=reporter)
    _report_trained(summary, as_json)


def _report_trained(summary: dict, as_json: bool) -> None:
    if as_json:
        _print_json({k: v for k, v in summary.items() if k not in ("history",)})
        return
    out_console.print(
        f"{summary['stage']}: {summary['architecture']} test accuracy {summary['accuracy']:.2%}, macro F1 "
        f"{summary['macro_f1']:.3f}, {_human(summary['params'])} parameters, best epoch {summary['best_epoch']} "
        f"of {summary['epochs_run']} → {summary['checkpoint']}"
    )


@app.command()
def analyze(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="a trained model (model.safetensors)")],
    out: Annotated[Path, typer.Option("--out", help="output folder: analysis.json, gbp_maps.npz, pictures")],
    data: Annotated[
        Optional[str],
        typer.Option(
            "--data",
            help="probe images come from this source's validation split (default: the data the model was trained on)",
        ),
    ] = None,
    probes_per_class: Annotated[int, typer.Option("--probes-per-class")] = 4,
    max_probes: Annotated[int, typer.Option("--max-probes")] = 64,
    probe_seed: Annotated[int, typer.Option("--probe-seed")] = 0,
    gbp_rule: Annotated[
        str, typer.Option("--gbp-rule", help="relu | derivative | ungated (how non-ReLU activations are guided)")
    ] = "relu",
    grayscale: Annotated[bool, typer.Option("--grayscale", help="compare grayscale maps instead of colour")] = False,
    data_range: Annotated[float, typer.Option("--data-range", help="SSIM data_range of the map images")] = 1.0,
    curve: Annotated[str, typer.Option("--curve", help="cut | adjacent: the curve the knee is picked on")] = "cut",
    sensitivity: Annotated[float, typer.Option("--sensitivity", "-S", help="kneed's S")] = 1.0,
    batch_size: Annotated[int, typer.Option("--batch-size", help="probe images per GBP batch")] = 16,
    data_root: DataRootOpt = None,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
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
        device=device,
    )
    with stage_bars(not quiet) as reporter:
        dataset = _load_data_for(checkpoint, data, reporter, data_root)
        analysis = analyze_stage(checkpoint, dataset, config, out, reporter=reporter)
    if as_json:
        _print_json({k: v for k, v in analysis.items() if k != "similarity_matrix"})
        return
    point, knee = analysis["cut_point"], analysis["knee"]
    how = "kneed" if knee["found"] else f"fallback ({knee['reason']})"
    out_console.print(
        f"knee at cut point {point['index']} ({point['name']}, {point['channels']} channels at "
        f"{point['height']}×{point['width']}) of {len(analysis['cut_points'])}, chosen by {how} → {out}/"
    )


@app.command(name="truncate")
def truncate_command(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="the trained base model")],
    out: Annotated[Path, typer.Option("--out", help="where to write the slim checkpoint (.safetensors)")],
    cut: Annotated[str, typer.Option("--cut", help="'knee' (needs --analysis) or a cut point index or name")] = "knee",
    analysis: Annotated[
        Optional[Path], typer.Option("--analysis", help="analysis.json of this model, for --cut knee")
    ] = None,
    dropout: Annotated[float, typer.Option("--dropout", help="dropout of the new head")] = 0.2,
    as_json: JsonOpt = False,
) -> None:
    """Keep the layers up to a cut point with their weights and attach a new head (GAP, dropout, linear)."""
    from layercut.stages.stages import truncate_stage

    result = truncate_stage(checkpoint, TruncateConfig(cut=cut, dropout=dropout), out, analysis)
    if as_json:
        _print_json(result)
        return
    out_console.print(
        f"cut after {result['cut_point']['name']} (cut point {result['cut_point']['index']}): "
        f"{_human(result['slim_params'])} of {_human(result['base_params'])} parameters kept → {out}"
    )


@app.command()
def retrain(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="a slim model from `layercut truncate`")],
    out: Annotated[Path, typer.Option("--out", help="output folder: model.safetensors, metrics.json, pictures")],
    data: Annotated[
        Optional[str], typer.Option("--data", help="default: the data the base model was trained on")
    ] = None,
    from_scratch: Annotated[
        bool, typer.Option("--from-scratch", help="re-initialise instead of fine-tuning the kept weights")
    ] = False,
    epochs: EpochsOpt = 5,
    batch_size: BatchOpt = 32,
    optimizer: OptimizerOpt = "adam",
    lr: LrOpt = None,
    weight_decay: WdOpt = 1e-4,
    schedule: ScheduleOpt = "cosine",
    label_smoothing: SmoothingOpt = 0.0,
    augment: AugmentOpt = True,
    patience: PatienceOpt = 5,
    seed: SeedOpt = 0,
    data_root: DataRootOpt = None,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train a slim model: fine-tune from the kept weights (default) or from scratch."""
    from layercut.stages.stages import retrain_stage

    config = _train_config(
        epochs, batch_size, optimizer, lr, weight_decay, schedule, label_smoothing, augment, patience, seed, device
    )
    with stage_bars(not quiet) as reporter:
        dataset = _load_data_for(checkpoint, data, reporter, data_root)
        summary = retrain_stage(checkpoint, dataset, config, out, from_scratch=from_scratch, reporter=reporter)
    _report_trained(summary, as_json)


@app.command()
def compare(
    base: Annotated[Path, typer.Option("--base", help="the trained base model")],
    slim: Annotated[Path, typer.Option("--slim", help="the retrained slim model")],
    out: Annotated[Path, typer.Option("--out", help="output folder: compare.json, compare.png")],
    data: Annotated[
        Optional[str], typer.Option("--data", help="default: the data the base model was trained on")
    ] = None,
    repeats: Annotated[int, typer.Option("--repeats", help="timed runs per latency measurement")] = 10,
    data_root: DataRootOpt = None,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Accuracy, macro-F1, parameters, MACs, checkpoint size and latency of two models on the same test split."""
    from layercut.stages.stages import compare_stage

    with stage_bars(not quiet) as reporter:
        dataset = _load_data_for(base, data, reporter, data_root)
        result = compare_stage(
            base, slim, dataset, CompareConfig(latency_repeats=repeats, device=device), out, reporter
        )
    if as_json:
        _print_json(result)
        return
    b, s = result["base"], result["slim"]
    out_console.print(
        f"accuracy {b['accuracy']:.2%} → {s['accuracy']:.2%}, params {_human(b['params'])} → "
        f"{_human(s['params'])}, MACs {_human(b['macs'])} → {_human(s['macs'])} → {out}/compare.json"
    )


@app.command()
def explain(
    model: Annotated[Path, typer.Option("--model", help="the trained model to explain (model.safetensors)")],
    out: Annotated[Path, typer.Option("--out", help="output folder: explain.json, explain_maps.npz, pictures")],
    compare_with: Annotated[
        Optional[Path],
        typer.Option(
            "--compare-with", help="a second model (e.g. the slim one) explained on the same images, side by side"
        ),
    ] = None,
    data: Annotated[
        Optional[str],
        typer.Option("--data", help="test images come from this source (default: the data the model was trained on)"),
    ] = None,
    methods: Annotated[
        str,
        typer.Option(
            "--methods",
            help=f"comma-separated: {', '.join(EXPLAIN_METHODS)}; default: all but scorecam (one forward pass per channel and image); all: every one",
        ),
    ] = "default",
    layer: Annotated[
        Optional[str],
        typer.Option(
            "--layer",
            help="layer the CAMs explain, e.g. features.7 or layer4 (default: the last cut point; see `layercut layers`)",
        ),
    ] = None,
    feature_layer: Annotated[
        Optional[str],
        typer.Option("--feature-layer", help="layer of the feature maps and receptive field (default: --layer)"),
    ] = None,
    target: Annotated[
        str,
        typer.Option(
            "--target", help="class explained: predicted (each model's own), all, a class index or a class name"
        ),
    ] = "predicted",
    images: Annotated[int, typer.Option("--images", help="test images explained, spread over the classes")] = 8,
    feature_maps: Annotated[
        int, typer.Option("--feature-maps", help="most active channels shown per image (0: none)")
    ] = 8,
    edges: Annotated[bool, typer.Option("--edges", help="draw Canny edges of the input over the overlays")] = False,
    gbp_rule: Annotated[
        str, typer.Option("--gbp-rule", help="relu | derivative | ungated (how non-ReLU activations are guided)")
    ] = "relu",
    batch_size: Annotated[int, typer.Option("--batch-size", help="images per forward/backward pass")] = 16,
    seed: Annotated[int, typer.Option("--seed", help="seed of the image choice")] = 0,
    data_root: DataRootOpt = None,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Grad-CAM, Grad-CAM++, Layer-CAM, Eigen-CAM, Score-CAM, guided backprop, guided Grad-CAM, saliency,
    feature maps and receptive fields for test images; with --compare-with, both models side by side."""
    from layercut.stages.explain import explain_stage

    config = ExplainConfig(
        methods=_methods(methods),
        layer=layer,
        feature_layer=feature_layer,
        target=_target(target, model),
        images=images,
        feature_maps=feature_maps,
        edges=edges,
        gbp_rule=gbp_rule,
        batch_size=batch_size,
        seed=seed,
        device=device,
    )
    with stage_bars(not quiet) as reporter:
        dataset = _load_data_for(model, data, reporter, data_root)
        result = explain_stage(model, dataset, config, out, reporter=reporter, compare_checkpoint=compare_with)
    if as_json:
        _print_json(result)
        return
    for key, entry in result["models"].items():
        out_console.print(
            f"{key}: {entry['label']} at {entry['layer']}: {entry['accuracy_on_these_images']:.0%} of "
            f"{len(result['images'])} images right"
        )
    if result["agreement"] is not None:
        out_console.print(f"the two models agree on {result['agreement']:.0%} of the images")
    out_console.print(f"{len(result['figures'])} pictures and explain.json → {out}/")


@app.command()
def layers(
    arch: Annotated[Optional[str], typer.Option("--arch", help="architecture name")] = None,
    image_size: ImageSizeOpt = 224,
    checkpoint: Annotated[
        Optional[Path], typer.Option("--checkpoint", help="list the cut points of this model instead")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """List an architecture's cut points: index, module name, channels and spatial size."""
    from layercut.stages.architectures import ARCHITECTURES, build_model, check_image_size
    from layercut.stages.checkpoint import load_checkpoint
    from layercut.stages.cutpoints import describe_cut_points

    if checkpoint is not None:
        model, spec = load_checkpoint(checkpoint)
        name, image_size = spec.architecture + (" (slim)" if spec.is_slim else ""), spec.image_size
    elif arch is not None:
        check_image_size(image_size)
        model, name = build_model(arch, 2), arch
    else:
        _fail(f"give --arch (one of {', '.join(ARCHITECTURES)}) or --checkpoint")
    infos = describe_cut_points(model, image_size)
    if as_json:
        _print_json({"architecture": name, "image_size": image_size, "cut_points": [vars(i) for i in infos]})
        return
    table = Table(title=f"{name} at {image_size} px: {len(infos)} cut points")
    for column in ("index", "module name", "type", "channels", "spatial size"):
        table.add_column(column, justify="left" if column in ("module name", "type") else "right")
    for i in infos:
        table.add_row(str(i.index), i.name, i.module, str(i.channels), f"{i.height}×{i.width}")
    out_console.print(table)


@app.command(name="curve")
def curve_command(
    maps: Annotated[Path, typer.Option("--maps", help="folder of map images 1.png … N.png in depth order")],
    mode: Annotated[
        str, typer.Option("--mode", help="cut (mean SSIM over pairs i ≤ k < j) or adjacent (SSIM(i, i+1))")
    ] = "cut",
    data_range: Annotated[
        float, typer.Option("--data-range", help="SSIM data_range (2 reproduces the paper's scikit-image 0.17 default)")
    ] = 1.0,
    as_json: JsonOpt = False,
) -> None:
    """Compute an SSIM curve from a folder of map images (all channels, floats in [0, 1])."""
    from layercut.stages.curves import CURVE_MODES, curve_from_matrix, read_map_folder
    from layercut.stages.ssim import similarity_matrix

    if mode not in CURVE_MODES:
        _fail(f"--mode must be one of {', '.join(CURVE_MODES)}, got {mode!r}")
    stack = read_map_folder(maps)
    values = curve_from_matrix(similarity_matrix(stack, data_range=data_range), mode)
    if as_json:
        _print_json(
            {
                "curve": [float(v) for v in values],
                "mode": mode,
                "data_range": data_range,
                "maps": int(stack.shape[1]),
                "channels": int(stack.shape[2]),
            }
        )
        return
    for i, value in enumerate(values):
        out_console.print(f"{i}\t{value:.6f}")


@app.command(name="knee")
def knee_command(
    curve: Annotated[
        Path,
        typer.Option("--curve", help="a JSON list of values, a JSON object with a 'curve' list, or an analysis.json"),
    ],
    mode: Annotated[
        Optional[str], typer.Option("--mode", help="with an analysis.json: cut or adjacent (default: the one it used)")
    ] = None,
    sensitivity: Annotated[float, typer.Option("--sensitivity", "-S", help="kneed's S")] = 1.0,
    shape: Annotated[str, typer.Option("--shape", help="concave | convex (kneed's curve)")] = "concave",
    direction: Annotated[str, typer.Option("--direction", help="increasing | decreasing")] = "increasing",
    as_json: JsonOpt = False,
) -> None:
    """Re-pick the knee of a curve without recomputing maps (kneed, with a reported fallback)."""
    from layercut.stages.knee import find_knee

    if not curve.is_file():
        _fail(f"{curve} does not exist")
    try:
        payload = json.loads(curve.read_text())
    except json.JSONDecodeError as exc:
        _fail(f"{curve} is not JSON ({exc})")
    names = None
    if isinstance(payload, dict) and "curves" in payload:
        mode = mode or payload.get("knee", {}).get("curve_mode", "cut")
        if mode not in payload["curves"]:
            _fail(f"{curve} has no {mode!r} curve; it has {', '.join(payload['curves'])}")
        values = payload["curves"][mode]
        names = [p["name"] for p in payload.get("cut_points", [])] or None
    elif isinstance(payload, dict) and "curve" in payload:
        values = payload["curve"]
    elif isinstance(payload, list):
        values = payload
    else:
        _fail(f"{curve} holds no curve: give a JSON list of numbers, an object with 'curve', or an analysis.json")
    result = find_knee(values, S=sensitivity, curve=shape, direction=direction)
    output = {
        "knee": result.index if result.found else None,
        "reason": result.reason,
        "chosen": result.index,
        "rule": result.rule,
        "cut_point": names[result.index] if names else None,
        "settings": {"S": sensitivity, "curve": shape, "direction": direction, "mode": mode},
    }
    if as_json:
        _print_json(output)
        return
    where = f" ({output['cut_point']})" if output["cut_point"] else ""
    if result.found:
        out_console.print(f"knee at index {result.index}{where}")
    else:
        out_console.print(
            f"kneed found no knee: {result.reason}; fallback chose index {result.index}{where} by {result.rule}"
        )


app.command()(serve)
app.command()(migrate)
app.add_typer(keys_app, name="keys")


def main() -> None:
    """Entry point: run the app, turning user errors into one-line messages and exit status 2."""
    debug = os.environ.get("LAYERCUT_DEBUG") == "1"
    try:
        app()
    except LayercutError as exc:
        if debug:
            raise
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except ValidationError as exc:
        problems = "; ".join(
            f"--{str(err['loc'][-1]).replace('_', '-')}: {err['msg']}" if err["loc"] else err["msg"]
            for err in exc.errors()
        )
        err_console.print(f"[bold red]error:[/] {problems}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except Cancelled as exc:
        err_console.print(f"[bold yellow]cancelled:[/] {exc}")
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the command line never shows a raw traceback
        if debug:
            raise
        err_console.print(
            f"[bold red]error:[/] unexpected {type(exc).__name__}: {exc} "
            "(set LAYERCUT_DEBUG=1 to see the traceback and please report it)",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
