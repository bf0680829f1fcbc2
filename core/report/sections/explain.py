"""The explanations of base and slim on the same test images: methods, the models explained, their predictions,
and the pictures (base beside slim, then one family of pictures at a time, then any others).

The pictures are those ``explain.json`` lists under ``figures`` (a name → file mapping), found in the stage's
folder; a listed file that is not a PNG inside the folder is named, not embedded. When explain.json does not
validate, its figure list is read as it is written (older files list files, or {file, caption} entries): the
pictures are files, worth showing whatever the list looks like.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

from markupsafe import Markup

from layercut.contracts.files import EXPLAIN_JSON
from layercut.contracts.results import (
    ExplainedImage,
    ExplainedModel,
    ExplainResult,
    ReceptiveFieldError,
    ReceptiveFieldSummary,
)
from layercut.report.figures import Figure, caption_from_name, inside
from layercut.report.formats import pct
from layercut.report.reading import is_number
from layercut.report.stages import Stage
from layercut.report.templating import render_template

EXPLAIN_FAMILIES = [  # (figure name prefix, heading, caption) of the explain stage's pictures, in report order
    ("cams", "Class activation maps", "class activation maps at {layer}"),
    ("class_cams", "Grad-CAM for every class", "Grad-CAM at {layer} for every class"),
    ("gradients", "Input gradients", "saliency, guided backprop and guided Grad-CAM of the explained class"),
    ("feature_maps", "Most active feature maps", "the most active channels of {feature_layer}"),
    ("receptive_field", "Receptive fields", "receptive field of the most active unit of {field_layer}"),
]
BASE_VS_SLIM = (
    "base_vs_slim",
    "The same test images, base vs slim: Grad-CAM for each model's own prediction, with both predictions",
)
MAX_PREDICTION_ROWS = 64
MISSING = "—"


class ModelRow(NamedTuple):
    key: str
    label: Any
    layer: Any
    accuracy: Any  # on the explained images
    receptive_field: Any


class Prediction(NamedTuple):
    text: str  # "cat (90%)"
    correct: bool | None


class ImageRow(NamedTuple):
    index: Any
    true_class: Any
    predictions: list[Prediction | None]  # one per model, None where the model has none
    miss: bool  # some model got it wrong


class FigureFamily(NamedTuple):
    heading: str
    figures: list[Figure]


def receptive_field(model: ExplainedModel) -> Any:
    """'11×11 px, stride 4', or why it is unknown."""
    field = model.receptive_field
    if isinstance(field, ReceptiveFieldSummary) and field.size and len(field.size) == 2 and field.stride:
        return f"{field.size[0]}×{field.size[1]} px, stride {field.stride[0]}"
    return (field.error if isinstance(field, ReceptiveFieldError) else None) or MISSING


def field_layer(model: ExplainedModel) -> str | None:
    """The layer whose receptive field was computed."""
    field = model.receptive_field
    return field.layer if isinstance(field, ReceptiveFieldSummary) else None


def prediction_rows(images: list[ExplainedImage], models: Mapping[str, ExplainedModel]) -> list[ImageRow]:
    """Each explained image with every model's prediction."""
    rows = []
    for i, image in enumerate(images[:MAX_PREDICTION_ROWS]):
        predictions: list[Prediction | None] = []
        for model in models.values():
            p = model.predictions[i] if i < len(model.predictions) else None
            if p is None:
                predictions.append(None)
                continue
            name = p.class_name if p.class_name is not None else p.class_
            predictions.append(Prediction(f"{name} ({pct(p.probability, 0)})", p.correct))
        miss = any(p is not None and p.correct is False for p in predictions)
        true_class = image.true_class if image.true_class is not None else image.true_label
        rows.append(
            ImageRow(
                image.index if image.index is not None else i,
                true_class if true_class is not None else MISSING,
                predictions,
                miss,
            )
        )
    return rows


def target_text(result: ExplainResult) -> Any:
    """Which class the pictures explain."""
    target, classes = result.target, result.classes
    if is_number(target) and -len(classes) <= int(target) < len(classes):
        return f"class {target}: {classes[int(target)]}"
    return {"predicted": "each model's predicted class", "all": "every class"}.get(target, target)


class Pictures:
    """The stage's listed pictures, each shown once, in the order the page asks for them."""

    def __init__(self, stage: Stage, listed: Any) -> None:
        self.stage = stage
        self.folder = stage.input.folder
        self.paths: dict[str, Path] = {}
        self.captions: dict[str, str] = {}
        self.problems: list[str] = []  # listed files that are not PNGs of the folder
        items: list[tuple[Any, Any]] = (
            list(listed.items())
            if isinstance(listed, Mapping)
            else ([(None, v) for v in listed] if isinstance(listed, list) else [])
        )
        for name, value in items:
            # an entry is a file name; an older, untyped list may give {file (or path), caption (or title)}
            entry = value if isinstance(value, Mapping) else {}
            file = value if isinstance(value, str) else (entry.get("file") or entry.get("path"))
            if not isinstance(file, str):
                continue
            path = self.folder / file if self.folder is not None else None
            if path is None or path.suffix.lower() != ".png" or not inside(path, self.folder):
                self.problems.append(
                    f"{name or file}: {file} is listed in {EXPLAIN_JSON} but is not a PNG in the folder"
                )
                continue
            key = str(name) if name is not None else path.stem
            self.paths[key] = path
            if entry.get("caption") or entry.get("title"):
                self.captions[key] = str(entry.get("caption") or entry.get("title"))

    def show(self, key: str, default_caption: str) -> Figure | None:
        """The listed picture ``key`` (with its own caption, else ``default_caption``), unless shown already."""
        path = self.paths.pop(key, None)
        if path is None or self.folder is None:
            return None
        ident = path.resolve().relative_to(self.folder.resolve()).as_posix()
        if ident in self.stage.used:
            return None
        self.stage.used.add(ident)
        return self.stage.figure(path, self.captions.get(key, default_caption), label=ident)

    def families(self, models: Mapping[str, ExplainedModel]) -> list[FigureFamily]:
        """The listed pictures of each family (``<prefix>_<model>``), one per model, in family order."""
        keys = list(models) or sorted({k.rsplit("_", 1)[-1] for k in self.paths if "_" in k})
        out = []
        for prefix, heading, caption in EXPLAIN_FAMILIES:
            group = []
            for key in keys:
                m = models.get(key)
                layer = m.layer if m is not None else None
                who = f"{key.capitalize()} model" + (f" ({m.label})" if m is not None and m.label else "")
                feature_layer = m.feature_maps.layer if m is not None and m.feature_maps is not None else None
                layers = {
                    "layer": layer if layer is not None else "the explained layer",
                    "feature_layer": feature_layer or layer or "the layer",
                    "field_layer": (field_layer(m) if m is not None else None) or layer or "the layer",
                }
                item = self.show(f"{prefix}_{key}", f"{who}: {caption.format(**layers)}")
                if item is not None:  # a grid of methods × images: at half width its labels cannot be read
                    group.append(replace(item, full_width=True))
            if group:
                out.append(FigureFamily(heading, group))
        return out

    def others(self) -> list[Figure]:
        """The listed pictures not shown yet, then the folder's unlisted PNGs."""
        listed = [item for key in list(self.paths) if (item := self.show(key, caption_from_name(key))) is not None]
        return listed + self.stage.rest()


def context(stage: Stage) -> dict[str, Any]:
    """The explain result's facts, models and predictions, and its pictures in page order."""
    result = stage.read(ExplainResult)
    models: dict[str, ExplainedModel] = {str(k): v for k, v in result.models.items()}
    images = result.images
    agreement, seconds = result.agreement, result.seconds
    # a result that did not validate: its figure list as written (see the module's docstring)
    listed = stage.raw.get("figures") if stage.partial and stage.raw is not None else result.figures
    pictures = Pictures(stage, listed)
    side_by_side = pictures.show(*BASE_VS_SLIM)  # the order of these three calls is the order on the page
    families = pictures.families(models)
    others = pictures.others()
    return {
        "methods": result.methods,
        "target": target_text(result),
        "images": f"{len(images)} images of the {result.split or 'test'} split" if images else None,
        "agreement": f"the models predict the same class on {pct(agreement, 0)} of these images"
        if is_number(agreement)
        else None,
        "time": f"{seconds:.1f} s on {result.device or '?'}" if is_number(seconds) else None,
        "models": [
            ModelRow(
                key,
                m.label if m.label is not None else MISSING,
                m.layer if m.layer is not None else MISSING,
                m.accuracy_on_these_images,
                receptive_field(m),
            )
            for key, m in models.items()
        ],
        "predictions": prediction_rows(images, models),
        "prediction_headers": [f"{key} prediction" for key in models],
        "images_total": len(images),
        "first_rows_only": len(images) > MAX_PREDICTION_ROWS,
        "max_rows": MAX_PREDICTION_ROWS,
        "side_by_side": side_by_side,
        "families": families,
        "others": others,
        "problems": pictures.problems,
    }


def render(stage: Stage) -> Markup:
    return render_template("explain.html", **context(stage))
