"""The data: the dataset, its classes and split, images per class and split, warnings and skipped files.

Drawn from the train result's ``data`` description (the retrain result's when there is no train stage).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from markupsafe import Markup

from layercut.report.reading import as_list, as_mapping, get, is_number
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


def split_text(split: Mapping) -> str | None:
    """How the data was split: 'stratified (seed 0) — note'."""
    if not split:
        return None
    seed = f"(seed {split['seed']})" if "seed" in split else None
    text = " ".join(str(x) for x in (split.get("method"), seed) if x)
    if split.get("note"):
        text += f" — {split['note']}"
    return text


def context(stage: Stage) -> dict[str, Any]:
    """The data description, its classes and the images-per-class table (or per split when there is no split)."""
    data = as_mapping(get(stage.summary, "data"))
    classes = as_list(data.get("classes")) or as_list(get(stage.summary, "classes"))
    skipped = as_mapping(data.get("skipped"))
    image_size = data.get("image_size")
    sizes = as_mapping(data.get("sizes"))
    per_class = as_mapping(data.get("per_class"))
    split_names = [k for k in ("train", "val", "test") if k in sizes or k in per_class] or list(sizes)
    rows: list[ClassRow] = []
    totals: list[Any] = []
    if per_class and classes:
        for name in classes[:MAX_TABLE_ROWS]:
            counts = [get(per_class, split, name) for split in split_names]
            rows.append(ClassRow(name, counts, sum(c for c in counts if is_number(c))))
        totals = [
            sizes.get(split)
            if is_number(sizes.get(split))
            else sum(v for v in as_mapping(per_class.get(split)).values() if is_number(v))
            for split in split_names
        ]
    files = [
        f if not isinstance(f, Mapping) else " — ".join(str(v) for v in f.values())
        for f in as_list(skipped.get("files"))
    ]
    return {
        "data": data,
        "classes": classes,
        "classes_shown": classes[:MAX_TABLE_ROWS],
        "image_size": f"{image_size} × {image_size} px" if image_size else None,
        "split": split_text(as_mapping(data.get("split"))),
        "skipped_count": skipped.get("count") if skipped else None,
        "split_names": split_names,
        "class_rows": rows,
        "totals": totals,
        "grand_total": sum(t for t in totals if is_number(t)),
        "first_classes_only": len(classes) > MAX_TABLE_ROWS,
        "max_rows": MAX_TABLE_ROWS,
        "sizes": sizes,
        "warnings": [w for w in as_list(data.get("warnings")) if w][:MAX_WARNINGS],
        "skipped_files": files[:MAX_SKIPPED_FILES],
        "skipped_files_more": max(0, len(files) - MAX_SKIPPED_FILES),
        "pictures": stage.take([CLASS_COUNTS]),
    }


def render(stage: Stage) -> Markup:
    return render_template("data.html", **context(stage))
