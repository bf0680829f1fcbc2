"""The data: the dataset, its classes and split, images per class and split, warnings and skipped files.

Drawn from the train result's ``data`` description (the retrain result's when there is no train stage).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from markupsafe import Markup

from layercut.contracts.results import RetrainResult, SplitInfo, TrainResult
from layercut.report.reading import is_number
from layercut.report.sections import MAX_TABLE_ROWS
from layercut.report.stages import Stage
from layercut.report.templating import render_template

CLASS_COUNTS = ("class_counts.png", "Images per class in each split")
MAX_WARNINGS = 50
MAX_SKIPPED_FILES = 20


class ClassRow(NamedTuple):
    name: Any
    counts: list[Any]  # one per split
    total: float


def training_result(stage: Stage) -> TrainResult | RetrainResult:
    """The result of a train or a retrain stage (metrics.json)."""
    return stage.read(RetrainResult) if stage.kind == "retrain" else stage.read(TrainResult)


def split_text(split: SplitInfo | None) -> str | None:
    """How the data was split: 'stratified (seed 0) — note'."""
    if split is None:
        return None
    seed = f"(seed {split.seed})" if split.seed is not None else None
    text = " ".join(str(x) for x in (split.method, seed) if x)
    if split.note:
        text += f" — {split.note}"
    return text


def context(stage: Stage) -> dict[str, Any]:
    """The data description, its classes and the images-per-class table (or per split when there is no split)."""
    result = training_result(stage)
    data = result.data
    classes = (data.classes if data is not None else []) or result.classes
    skipped = data.skipped if data is not None else None
    image_size = data.image_size if data is not None else None
    sizes, per_class = (data.sizes, data.per_class) if data is not None else (None, None)
    splits = {  # split → (its images, its images per class), where the result has them
        "train": (sizes.train if sizes else None, per_class.train if per_class else None),
        "val": (sizes.val if sizes else None, per_class.val if per_class else None),
        "test": (sizes.test if sizes else None, per_class.test if per_class else None),
    }
    split_names = [name for name, (size, counts) in splits.items() if size is not None or counts is not None]
    rows: list[ClassRow] = []
    totals: list[Any] = []
    if any(counts for _, counts in splits.values()) and classes:
        for name in classes[:MAX_TABLE_ROWS]:
            counts = [(splits[split][1] or {}).get(name) for split in split_names]
            rows.append(ClassRow(name, counts, sum(c for c in counts if is_number(c))))
        totals = [
            size if is_number(size) else sum(v for v in (counts or {}).values() if is_number(v))
            for size, counts in (splits[split] for split in split_names)
        ]
    files = skipped.files if skipped is not None else []
    return {
        "data": data,
        "classes": classes,
        "classes_shown": classes[:MAX_TABLE_ROWS],
        "image_size": f"{image_size} × {image_size} px" if image_size else None,
        "split": split_text(data.split if data is not None else None),
        "skipped_count": skipped.count if skipped is not None else None,
        "split_names": split_names,
        "class_rows": rows,
        "totals": totals,
        "grand_total": sum(t for t in totals if is_number(t)),
        "first_classes_only": len(classes) > MAX_TABLE_ROWS,
        "max_rows": MAX_TABLE_ROWS,
        "sizes": {name: size for name, (size, _) in splits.items() if size is not None},
        "warnings": [w for w in (data.warnings if data is not None else []) if w][:MAX_WARNINGS],
        "skipped_files": files[:MAX_SKIPPED_FILES],
        "skipped_files_more": max(0, len(files) - MAX_SKIPPED_FILES),
        "pictures": stage.take([CLASS_COUNTS]),
    }


def render(stage: Stage) -> Markup:
    return render_template("data.html", **context(stage))
