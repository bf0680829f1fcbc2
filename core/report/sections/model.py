"""A model's section (the base model from train, the slim model from retrain): how it was trained, its metrics on
the validation and test splits, per class, its most-confused pairs, and its pictures."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

from markupsafe import Markup

from layercut.contracts.configs import TrainConfig
from layercut.contracts.results import ClassificationReport, ClassRow, RetrainResult, TrainResult
from layercut.report.formats import human, integer, pct
from layercut.report.reading import is_number, salvage
from layercut.report.sections import MAX_TABLE_ROWS
from layercut.report.sections.data import CLASS_COUNTS, training_result
from layercut.report.stages import Stage
from layercut.report.templating import render_template

Role = Literal["base", "slim"]

MODEL_FIGURES = [
    ("training_curves.png", "Training curves: loss and accuracy per epoch on the training and validation splits"),
    ("confusion_matrix.png", "Confusion matrix on the test split (counts and row percentages)"),
    ("roc_curves.png", "One-vs-rest ROC curves on the test split"),
    ("confused_pairs.png", "The most-confused class pairs, with example images"),
]
METRICS: list[tuple[Callable[[ClassificationReport], Any], str, bool]] = [
    # (the metric of a validation or test report, row label, shown as a percentage)
    (lambda r: r.accuracy, "Accuracy", True),
    (lambda r: r.macro_f1, "Macro-F1", False),
    (lambda r: r.macro_precision, "Macro precision", False),
    (lambda r: r.macro_recall, "Macro recall", False),
    (lambda r: r.weighted_f1, "Weighted F1", False),
    (lambda r: r.roc_auc_macro, "ROC AUC (macro, one-vs-rest)", False),
]
MAX_CONFUSED_PAIRS = 10


class MetricRow(NamedTuple):
    label: str
    val: Any
    test: Any
    percent: bool


class ClassMetrics(NamedTuple):
    name: str
    scores: ClassRow  # precision, recall, f1, support
    roc_auc: Any


def training_settings(config: TrainConfig | None) -> str | None:
    """The training configuration in one line: 'adamw, lr 0.001, batch 32, max epochs 10, …'."""
    if config is None:
        return None
    bits = []
    if config.optimizer:
        bits.append(str(config.optimizer))
    bits.append(f"lr {config.lr}" if config.lr is not None else "lr (the optimizer's default)")
    for value, label in (
        (config.batch_size, "batch"),
        (config.epochs, "max epochs"),
        (config.schedule, "{} schedule"),
        (config.weight_decay, "weight decay"),
        (config.label_smoothing, "label smoothing"),
        (config.patience, "patience"),
        (config.seed, "seed"),
    ):
        if value is not None:
            bits.append(label.format(value) if "{}" in label else f"{label} {value}")
    if config.augment is not None:
        bits.append("augmentation on" if config.augment else "no augmentation")
    return ", ".join(bits)


def facts(result: TrainResult | RetrainResult, role: Role) -> list[tuple[str, Any]]:
    """(label, value) lines on the model and its training."""
    cut = result.cut_point
    epochs = result.epochs_run
    epoch_text = None
    if epochs is not None:
        best = result.best_epoch if result.best_epoch is not None else "—"
        epoch_text = f"{epochs} (best epoch {best}"
        epoch_text += ", stopped early)" if result.stopped_early else ")"
    how = None
    if role == "slim":
        scratch = isinstance(result, RetrainResult) and result.from_scratch
        how = "from scratch (weights re-initialised)" if scratch else "fine-tuned from the kept weights"
    pretrained = result.pretrained if isinstance(result, TrainResult) else None
    params, best_val, speed = result.params, result.best_val_accuracy, result.images_per_second
    return [
        ("Architecture", result.architecture),
        ("Cut after", f"{cut.name} (cut point {cut.index})" if cut else None),
        ("Trained", how),
        ("Pretrained weights", ("yes" if pretrained else "no") if pretrained is not None else None),
        ("Parameters", f"{integer(params)} ({human(params)})" if is_number(params) else None),
        ("Epochs run", epoch_text),
        ("Best validation accuracy", pct(best_val) if is_number(best_val) else None),
        (
            "Training throughput",
            f"{speed:.0f} images/s on {result.device or '?'}" if is_number(speed) else result.device,
        ),
        ("Settings", training_settings(result.config)),
    ]


def metric_rows(result: TrainResult | RetrainResult, partial: bool) -> list[MetricRow]:
    """Each metric on the validation and the test split; a partial result shows only the metrics it has (without
    a test report: the test accuracy and macro-F1 it records beside the reports)."""
    val = result.val
    test = result.test or salvage(ClassificationReport, {"accuracy": result.accuracy, "macro_f1": result.macro_f1})
    rows = []
    for metric, label, percent in METRICS:
        on_val, on_test = metric(val) if val is not None else None, metric(test)
        if not partial or on_val is not None or on_test is not None:
            rows.append(MetricRow(label, on_val, on_test, percent))
    return rows


def context(stage: Stage, role: Role) -> dict[str, Any]:
    """The model's facts, metric rows, per-class metrics, most-confused pairs and pictures."""
    result = training_result(stage)
    test = result.test
    per_class = test.per_class if test is not None else {}
    roc_auc = test.roc_auc_per_class if test is not None else {}
    known = MODEL_FIGURES + ([CLASS_COUNTS] if role == "slim" else [])
    return {
        "facts": facts(result, role),
        "metrics": metric_rows(result, stage.partial),
        "per_class": [
            ClassMetrics(name, scores, roc_auc.get(name)) for name, scores in list(per_class.items())[:MAX_TABLE_ROWS]
        ],
        "classes_total": len(per_class),
        "first_classes_only": len(per_class) > MAX_TABLE_ROWS,
        "max_rows": MAX_TABLE_ROWS,
        "confused": (test.most_confused if test is not None else [])[:MAX_CONFUSED_PAIRS],
        "pictures": stage.take(known) + stage.rest(),
    }


def render(stage: Stage, role: Role) -> Markup:
    return render_template("model.html", **context(stage, role))
