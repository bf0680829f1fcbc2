"""A model's section (the base model from train, the slim model from retrain): how it was trained, its metrics on
the validation and test splits, per class, its most-confused pairs, and its pictures."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

from markupsafe import Markup

from layercut.report.formats import human, integer, pct
from layercut.report.reading import as_list, as_mapping, is_number
from layercut.report.sections import MAX_TABLE_ROWS
from layercut.report.sections.data import CLASS_COUNTS
from layercut.report.stages import Stage
from layercut.report.templating import render_template

Role = Literal["base", "slim"]

MODEL_FIGURES = [
    ("training_curves.png", "Training curves: loss and accuracy per epoch on the training and validation splits"),
    ("confusion_matrix.png", "Confusion matrix on the test split (counts and row percentages)"),
    ("roc_curves.png", "One-vs-rest ROC curves on the test split"),
    ("confused_pairs.png", "The most-confused class pairs, with example images"),
]
METRICS = [  # (key in the validation and test reports, row label, shown as a percentage)
    ("accuracy", "Accuracy", True),
    ("macro_f1", "Macro-F1", False),
    ("macro_precision", "Macro precision", False),
    ("macro_recall", "Macro recall", False),
    ("weighted_f1", "Weighted F1", False),
    ("roc_auc_macro", "ROC AUC (macro, one-vs-rest)", False),
]
MAX_CONFUSED_PAIRS = 10


class MetricRow(NamedTuple):
    label: str
    val: Any
    test: Any
    percent: bool


class ClassMetrics(NamedTuple):
    name: str
    scores: Mapping  # precision, recall, f1, support
    roc_auc: Any


def training_settings(config: Mapping) -> str | None:
    """The training configuration in one line: 'adamw, lr 0.001, batch 32, max epochs 10, …'."""
    if not config:
        return None
    bits = []
    if config.get("optimizer"):
        bits.append(str(config["optimizer"]))
    bits.append(f"lr {config['lr']}" if config.get("lr") is not None else "lr (the optimizer's default)")
    for key, label in (
        ("batch_size", "batch"),
        ("epochs", "max epochs"),
        ("schedule", "{} schedule"),
        ("weight_decay", "weight decay"),
        ("label_smoothing", "label smoothing"),
        ("patience", "patience"),
        ("seed", "seed"),
    ):
        if config.get(key) is not None:
            bits.append(label.format(config[key]) if "{}" in label else f"{label} {config[key]}")
    if "augment" in config:
        bits.append("augmentation on" if config["augment"] else "no augmentation")
    return ", ".join(bits)


def facts(result: Mapping, role: Role) -> list[tuple[str, Any]]:
    """(label, value) lines on the model and its training."""
    cut = as_mapping(result.get("cut_point"))
    epochs = result.get("epochs_run")
    epoch_text = None
    if epochs is not None:
        epoch_text = f"{epochs} (best epoch {result.get('best_epoch', '—')}"
        epoch_text += ", stopped early)" if result.get("stopped_early") else ")"
    how = None
    if role == "slim":
        how = (
            "from scratch (weights re-initialised)"
            if result.get("from_scratch")
            else "fine-tuned from the kept weights"
        )
    params, best_val, speed = result.get("params"), result.get("best_val_accuracy"), result.get("images_per_second")
    return [
        ("Architecture", result.get("architecture")),
        ("Cut after", f"{cut.get('name')} (cut point {cut.get('index')})" if cut else None),
        ("Trained", how),
        ("Pretrained weights", ("yes" if result.get("pretrained") else "no") if "pretrained" in result else None),
        ("Parameters", f"{integer(params)} ({human(params)})" if is_number(params) else None),
        ("Epochs run", epoch_text),
        ("Best validation accuracy", pct(best_val) if is_number(best_val) else None),
        (
            "Training throughput",
            f"{speed:.0f} images/s on {result.get('device', '?')}" if is_number(speed) else result.get("device"),
        ),
        ("Settings", training_settings(as_mapping(result.get("config")))),
    ]


def context(stage: Stage, role: Role) -> dict[str, Any]:
    """The model's facts, metric rows, per-class metrics, most-confused pairs and pictures."""
    result = stage.summary or {}
    val, test = as_mapping(result.get("val")), as_mapping(result.get("test"))
    if not test:
        test = {"accuracy": result.get("accuracy"), "macro_f1": result.get("macro_f1")}
    per_class = as_mapping(test.get("per_class"))
    roc_auc = as_mapping(test.get("roc_auc_per_class"))
    known = MODEL_FIGURES + ([CLASS_COUNTS] if role == "slim" else [])
    return {
        "facts": facts(result, role),
        "metrics": [
            MetricRow(label, val.get(key), test.get(key), percent)
            for key, label, percent in METRICS
            if key in test or key in val
        ],
        "per_class": [
            ClassMetrics(name, as_mapping(scores), roc_auc.get(name))
            for name, scores in list(per_class.items())[:MAX_TABLE_ROWS]
        ],
        "classes_total": len(per_class),
        "first_classes_only": len(per_class) > MAX_TABLE_ROWS,
        "max_rows": MAX_TABLE_ROWS,
        "confused": [c for c in as_list(test.get("most_confused")) if isinstance(c, Mapping)][:MAX_CONFUSED_PAIRS],
        "pictures": stage.take(known) + stage.rest(),
    }


def render(stage: Stage, role: Role) -> Markup:
    return render_template("model.html", **context(stage, role))
