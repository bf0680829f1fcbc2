"""The explain stage: what a model looks at, for the same test images, beside the model it was cut from.

For each model: the CAMs of one layer (``cams``), guided backpropagation of the class score with respect
to the input (``gbp``'s guided activations and rules), guided Grad-CAM (guided backprop × Grad-CAM
upsampled bilinearly, as captum's ``GuidedGradCam``), saliency (max over channels of |∂score/∂x|, as
captum's ``Saliency(abs=True)``), the most active channels of a layer and the receptive field of its most
active unit (``receptive_field``), optionally with Canny edges of the input (scikit-image).
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from layercut.contracts import files
from layercut.contracts.configs import EXPLAIN_METHODS, ExplainConfig
from layercut.contracts.errors import LayercutError
from layercut.contracts.results import (
    ExplainedImage,
    ExplainedModel,
    ExplainResult,
    FeatureMapsSummary,
    FieldUnit,
    Prediction,
    ReceptiveFieldError,
    ReceptiveFieldSummary,
)
from layercut.stages import explain_plots
from layercut.stages.cams import (
    CAM_METHODS,
    CamResult,
    Target,
    batch_target,
    capture_output,
    compute_cams,
    model_device_dtype,
    resolve_layer,
    resolve_targets,
    to_input_size,
    upsample,
)
from layercut.stages.checkpoint import ModelSpec, load_checkpoint
from layercut.stages.data import Dataset, stratified_sample
from layercut.stages.devices import resolve_device
from layercut.stages.gbp import analysis_mode, check_rule, guided_activations, map_images
from layercut.stages.progress import SILENT, Reporter
from layercut.stages.receptive_field import ReceptiveField, most_active_unit, receptive_field
from layercut.stages.stages import check_dataset_fits, write_result
from layercut.stages.training import normalise

GRADIENT_METHODS: tuple[str, ...] = ("guided_backprop", "guided_gradcam", "saliency")
assert EXPLAIN_METHODS == CAM_METHODS + GRADIENT_METHODS, "config.EXPLAIN_METHODS and the methods here disagree"
STAGE = "explain"
MAPS_NAME = "explain_maps.npz"
JSON_NAME = files.EXPLAIN_JSON


# ----------------------------------------------------------------------------- input gradients


def input_gradients(
    model: nn.Module,
    images: torch.Tensor,
    target: Target = "predicted",
    *,
    guided_rule: str | None = None,
    batch_size: int = 16,
    reporter: Reporter | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(gradients (N, T, C, H, W), targets (N, T))``: ∂score/∂x of each target class, float32 on the CPU.

    With ``guided_rule`` every activation back-propagates guided gradient (``gbp.guided_activations``),
    which makes the gradient guided backpropagation; the forward, and so the prediction, is unchanged.
    """
    if images.dim() != 4:
        raise LayercutError(f"images must be a (N, C, H, W) tensor, got shape {tuple(images.shape)}")
    if guided_rule is not None:
        check_rule(guided_rule)
    reporter = reporter or SILENT
    device, dtype = model_device_dtype(model)
    grads, targets = [], []
    starts = list(range(0, images.shape[0], batch_size))
    guided = guided_activations(model, guided_rule) if guided_rule is not None else nullcontext()
    with analysis_mode(model), guided, torch.enable_grad():
        for b, start in enumerate(starts):
            x = images[start : start + batch_size].detach().to(device=device, dtype=dtype).requires_grad_()
            logits = model(x)
            chosen = resolve_targets(logits.detach(), batch_target(target, start, start + x.shape[0]))
            scores = logits.gather(1, chosen)
            columns = []
            for t in range(chosen.shape[1]):
                (grad,) = torch.autograd.grad(scores[:, t].sum(), x, retain_graph=t < chosen.shape[1] - 1)
                columns.append(grad.detach().float().cpu())
            grads.append(torch.stack(columns, dim=1))
            targets.append(chosen.cpu())
            what = "guided backprop" if guided_rule is not None else "saliency"
            reporter.update(STAGE, (b + 1) / len(starts), f"{what}: batch {b + 1}/{len(starts)}")
    return torch.cat(grads), torch.cat(targets)


def guided_backprop(
    model: nn.Module,
    images: torch.Tensor,
    target: Target = "predicted",
    *,
    rule: str = "relu",
    batch_size: int = 16,
    reporter: Reporter | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Guided backpropagation of each target class score: ``(maps (N, T, C, H, W), targets (N, T))``."""
    return input_gradients(model, images, target, guided_rule=rule, batch_size=batch_size, reporter=reporter)


def saliency(
    model: nn.Module,
    images: torch.Tensor,
    target: Target = "predicted",
    *,
    batch_size: int = 16,
    reporter: Reporter | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Saliency: ``(max_c |∂score/∂x_c| (N, T, H, W), targets (N, T))``."""
    grads, targets = input_gradients(model, images, target, batch_size=batch_size, reporter=reporter)
    return grads.abs().amax(dim=2), targets


def guided_gradcam(guided: torch.Tensor, gradcam_maps: torch.Tensor) -> torch.Tensor:
    """Guided backprop (N, T, C, H, W) × the raw Grad-CAM (N, T, h, w) upsampled bilinearly to (H, W)."""
    return guided * upsample(gradcam_maps, tuple(guided.shape[-2:]))[:, :, None]


def layer_activations(
    model: nn.Module, images: torch.Tensor, layer: str | None = None, batch_size: int = 16
) -> tuple[str, torch.Tensor]:
    """``(name, activations (N, C, h, w))`` of ``layer`` for normalised images, float32 on the CPU."""
    name, module = resolve_layer(model, layer)
    device, dtype = model_device_dtype(model)
    parts = []
    with analysis_mode(model), torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            with capture_output(module, name, leaf=False) as captured:
                model(images[start : start + batch_size].to(device=device, dtype=dtype))
            if len(captured) != 1:
                raise LayercutError(
                    f"layer {name!r} runs {len(captured)} times in one forward pass; choose a layer that runs once"
                )
            parts.append(captured[0].float().cpu())
    return name, torch.cat(parts)


def top_channels(activations: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``k`` channels of highest mean activation per image.

    Returns ``(maps (N, k, h, w), channels (N, k), means (N, k))``, the most active first.
    """
    k = min(k, activations.shape[1])
    means = activations.mean(dim=(2, 3))
    top, channels = means.topk(k, dim=1)
    maps = activations.gather(1, channels[:, :, None, None].expand(-1, -1, *activations.shape[2:]))
    return maps, channels, top


def edge_masks(images: torch.Tensor, sigma: float = 1.0) -> np.ndarray:
    """Canny edges (scikit-image, default thresholds) of the grayscale of each (3, H, W) image in [0, 1]."""
    from skimage.color import rgb2gray
    from skimage.feature import canny

    array = images.detach().cpu().numpy()
    return np.stack(
        [canny(rgb2gray(np.transpose(img, (1, 2, 0))) if img.shape[0] == 3 else img[0], sigma=sigma) for img in array]
    )


# ----------------------------------------------------------------------------- one model


@dataclass
class ModelExplanation:
    """Every explanation of one model for the chosen images (tensors float32 on the CPU)."""

    key: str  # "base" or "slim"
    label: str  # e.g. "vgg11" or "vgg11 cut at features.7"
    checkpoint: str
    spec: ModelSpec
    cams: CamResult
    probabilities: torch.Tensor  # (N, K)
    gradients: dict[str, torch.Tensor] = field(default_factory=dict)  # guided_backprop, guided_gradcam, saliency
    feature_layer: str = ""
    features: torch.Tensor | None = None  # (N, C, h, w) of the feature layer
    top_maps: torch.Tensor | None = None  # (N, k, h, w): its k most active channels
    top_channels: torch.Tensor | None = None  # (N, k) their indices
    top_means: torch.Tensor | None = None  # (N, k) their mean activations
    receptive_field: ReceptiveField | None = None
    receptive_field_error: str | None = None

    @property
    def predicted(self) -> torch.Tensor:
        return self.probabilities.argmax(dim=1)

    def shown_column(self) -> torch.Tensor:
        """Per image, the target column drawn in the pictures: the only one, or the predicted class's for "all"."""
        targets = self.cams.targets
        if targets.shape[1] == 1:
            return torch.zeros(targets.shape[0], dtype=torch.long)
        return (targets == self.predicted[:, None]).float().argmax(dim=1)


def explain_model(
    model: nn.Module,
    spec: ModelSpec,
    images: torch.Tensor,
    config: ExplainConfig,
    key: str,
    checkpoint: str,
    reporter: Reporter = SILENT,
) -> ModelExplanation:
    """All requested explanations of one model for normalised ``images`` on the model's device."""
    methods = list(dict.fromkeys(config.methods))
    # Grad-CAM is always computed: guided Grad-CAM and the base-vs-slim picture use it
    cam_methods = [m for m in CAM_METHODS if m in methods or m == "gradcam"]
    label = spec.architecture + (f" cut at {spec.cut_point.name}" if spec.cut_point else "")
    cams = compute_cams(
        model,
        images,
        cam_methods,
        layer=config.layer,
        target=config.target,
        batch_size=config.batch_size,
        score_batch_size=config.scorecam_batch_size,
        keep_activations=True,
        reporter=reporter.scaled(0.0, 0.5),
        stage=STAGE,
    )
    explanation = ModelExplanation(key, label, checkpoint, spec, cams, torch.softmax(cams.logits, dim=1))
    targets = cams.targets
    if "guided_backprop" in methods or "guided_gradcam" in methods:
        guided, _ = guided_backprop(
            model,
            images,
            targets,
            rule=config.gbp_rule,
            batch_size=config.batch_size,
            reporter=reporter.scaled(0.5, 0.75),
        )
        if "guided_backprop" in methods:
            explanation.gradients["guided_backprop"] = guided
        if "guided_gradcam" in methods:
            explanation.gradients["guided_gradcam"] = guided_gradcam(guided, cams.maps["gradcam"])
    if "saliency" in methods:
        explanation.gradients["saliency"], _ = saliency(
            model, images, targets, batch_size=config.batch_size, reporter=reporter.scaled(0.75, 0.9)
        )
    same_layer = (
        config.feature_layer is None
        or resolve_layer(model, config.feature_layer)[1] is resolve_layer(model, cams.layer)[1]
    )
    if same_layer:
        explanation.feature_layer, explanation.features = cams.layer, cams.activations
    else:
        explanation.feature_layer, explanation.features = layer_activations(
            model, images, config.feature_layer, config.batch_size
        )
    if config.feature_maps > 0:
        explanation.top_maps, explanation.top_channels, explanation.top_means = top_channels(
            explanation.features, config.feature_maps
        )
    try:
        explanation.receptive_field = receptive_field(
            model, explanation.feature_layer, spec.image_size, in_channels=images.shape[1]
        )
    except LayercutError as exc:
        explanation.receptive_field_error = str(exc)
    reporter.update(STAGE, 1.0, f"{key}: explained {images.shape[0]} images at {cams.layer}")
    return explanation


# ----------------------------------------------------------------------------- the stage


def pick_images(labels: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """Seeded, sorted indices of ``count`` images (or all there are) taken from the classes in turn."""
    count = min(count, int(labels.shape[0]))
    if count < 1:
        raise LayercutError("the test split has no images to explain")
    return stratified_sample(labels, count, count, seed)


def _check_target(target: str | int, classes: list[str]) -> None:
    if isinstance(target, int) and not 0 <= target < len(classes):
        raise LayercutError(
            f"--target {target} is not a class index: the model has {len(classes)} classes "
            f"(0..{len(classes) - 1}: {', '.join(classes)})"
        )


def explain_stage(
    checkpoint: str | Path,
    dataset: Dataset,
    config: ExplainConfig,
    out_dir: str | Path,
    reporter: Reporter = SILENT,
    compare_checkpoint: str | Path | None = None,
) -> ExplainResult:
    """Explain ``config.images`` test images with the model of ``checkpoint`` (and the same images with the
    model of ``compare_checkpoint`` beside it); writes explain.json, explain_maps.npz and PNGs to ``out_dir``."""
    out_dir = Path(out_dir)
    started = time.perf_counter()
    device = resolve_device(config.device)
    _check_target(config.target, dataset.classes)
    paths = [("base", Path(checkpoint))] + ([("slim", Path(compare_checkpoint))] if compare_checkpoint else [])
    loaded = []
    for key, path in paths:
        model, spec = load_checkpoint(path, device)
        check_dataset_fits(spec, dataset)
        loaded.append((key, path, model, spec))
    split = dataset.test
    indices = pick_images(split.labels, config.images, config.seed)
    raw_images = split.images[indices]
    labels = split.labels[indices]
    reporter.update(STAGE, 0.0, f"explaining {len(indices)} test images with {len(loaded)} model(s)")

    explanations = []
    for i, (key, path, model, spec) in enumerate(loaded):
        mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
        std = torch.tensor(spec.std).view(1, -1, 1, 1)
        inputs = normalise(raw_images, mean, std).to(device)
        share = reporter.scaled(0.9 * i / len(loaded), 0.9 * (i + 1) / len(loaded))
        explanations.append(explain_model(model, spec, inputs, config, key, str(path), share))
        model.cpu()

    out_dir.mkdir(parents=True, exist_ok=True)
    _save_maps(out_dir / MAPS_NAME, raw_images, indices, labels, explanations)
    reporter.update(STAGE, 0.92, "drawing the pictures")
    images01 = raw_images.float() / 255.0
    edges = edge_masks(images01) if config.edges else None
    figures = _pictures(explanations, images01, labels, dataset.classes, out_dir, config, edges)
    result = ExplainResult(
        stage=STAGE,
        methods=list(dict.fromkeys(config.methods)),
        target=config.target,
        classes=list(dataset.classes),
        split="test",
        images=[
            ExplainedImage(index=int(idx), true_label=int(lab), true_class=dataset.classes[int(lab)])
            for idx, lab in zip(indices, labels)
        ],
        models={e.key: _model_summary(e, labels, dataset.classes) for e in explanations},
        agreement=_agreement(explanations),
        figures=figures,
        maps=MAPS_NAME,
        device=str(device),
        seconds=time.perf_counter() - started,
        config=config,
    )
    write_result(out_dir / JSON_NAME, result)
    reporter.update(STAGE, 1.0, "done")
    return result


def _agreement(explanations: list[ModelExplanation]) -> float | None:
    """Share of the images on which the two models predict the same class (None with one model)."""
    if len(explanations) < 2:
        return None
    return float((explanations[0].predicted == explanations[1].predicted).float().mean())


def _model_summary(e: ModelExplanation, labels: torch.Tensor, classes: list[str]) -> ExplainedModel:
    """What one model predicts and looks at for the explained images, as explain.json records it."""
    predicted = e.predicted
    probability = e.probabilities.gather(1, predicted[:, None])[:, 0]
    return ExplainedModel(
        checkpoint=e.checkpoint,
        architecture=e.spec.architecture,
        label=e.label,
        slim=e.spec.is_slim,
        cut_point=e.spec.cut_point,
        layer=e.cams.layer,
        layer_shape=tuple(e.cams.activations.shape[1:]),
        targets=e.cams.targets.tolist(),
        predictions=[
            Prediction(class_=int(p), class_name=classes[int(p)], probability=float(q), correct=bool(p == t))
            for p, q, t in zip(predicted, probability, labels)
        ],
        accuracy_on_these_images=float((predicted == labels).float().mean()),
        feature_maps=FeatureMapsSummary(
            layer=e.feature_layer,
            channels=e.top_channels.tolist() if e.top_channels is not None else [],
            means=e.top_means.tolist() if e.top_means is not None else [],
        ),
        receptive_field=_field_summary(e),
    )


def _units(e: ModelExplanation) -> list[tuple[int, int, int]]:
    return [most_active_unit(a) for a in e.features] if e.features is not None else []


def _field_summary(e: ModelExplanation) -> ReceptiveFieldSummary | ReceptiveFieldError:
    """The layer's receptive field geometry and, per image, its most active unit and that unit's box (or why the
    field could not be computed)."""
    rf = e.receptive_field
    if rf is None:
        return ReceptiveFieldError(error=e.receptive_field_error)
    units = []
    for c, y, x in _units(e):
        box = rf.box(y, x)
        units.append(FieldUnit(channel=c, y=y, x=x, box=(box.top, box.left, box.bottom, box.right)))
    return ReceptiveFieldSummary(
        **rf.to_dict(),
        units=units,
        box_format="[top, left, bottom, right] in input pixels, bottom and right exclusive, clipped to the image",
    )


def _save_maps(
    path: Path,
    raw_images: torch.Tensor,
    indices: torch.Tensor,
    labels: torch.Tensor,
    explanations: list[ModelExplanation],
) -> None:
    """Raw maps per model as ``{model}.{method}`` (CAMs (N, T, h, w) at layer resolution, gradients at input size)."""
    arrays: dict[str, np.ndarray] = {"images": raw_images.numpy(), "indices": indices.numpy(), "labels": labels.numpy()}
    for e in explanations:
        arrays[f"{e.key}.targets"] = e.cams.targets.numpy()
        arrays[f"{e.key}.probabilities"] = e.probabilities.numpy()
        for method, maps in {**e.cams.maps, **e.gradients}.items():
            arrays[f"{e.key}.{method}"] = maps.numpy().astype(np.float32)
        if e.top_maps is not None:
            arrays[f"{e.key}.feature_maps"] = e.top_maps.numpy()
            arrays[f"{e.key}.feature_channels"] = e.top_channels.numpy()
    np.savez_compressed(path, **arrays)


def _shown(maps: torch.Tensor, column: torch.Tensor) -> torch.Tensor:
    """The drawn target column of (N, T, …) maps → (N, …)."""
    index = column.view(-1, 1, *([1] * (maps.dim() - 2))).expand(-1, 1, *maps.shape[2:])
    return maps.gather(1, index)[:, 0]


def _captions(e: ModelExplanation, labels: torch.Tensor, classes: list[str]) -> list[str]:
    probability = e.probabilities.gather(1, e.predicted[:, None])[:, 0]
    return [
        f"true: {classes[int(t)]}\npred: {classes[int(p)]} ({float(q):.0%})"
        for t, p, q in zip(labels, e.predicted, probability)
    ]


def _pictures(
    explanations: list[ModelExplanation],
    images01: torch.Tensor,
    labels: torch.Tensor,
    classes: list[str],
    out_dir: Path,
    config: ExplainConfig,
    edges: np.ndarray | None,
) -> dict[str, str]:
    """Draw every picture; returns {figure name: file name in out_dir}."""
    figures: dict[str, str] = {}
    size = tuple(images01.shape[-2:])
    images = images01.numpy()
    methods = list(dict.fromkeys(config.methods))
    for e in explanations:
        column = e.shown_column()
        explained = [classes[int(c)] for c in e.cams.targets.gather(1, column[:, None])[:, 0]]
        captions = _captions(e, labels, classes)
        who = f"{e.key}: {e.label}"
        cam_methods = [m for m in CAM_METHODS if m in methods]
        if cam_methods:
            overlays = {m: to_input_size(_shown(e.cams.maps[m], column), size).numpy() for m in cam_methods}
            name = f"cams_{e.key}"
            explain_plots.plot_cam_overlays(
                images,
                overlays,
                captions,
                explained,
                out_dir / f"{name}.png",
                f"{who}: class activation maps at {e.cams.layer}",
                edges,
            )
            figures[name] = f"{name}.png"
        if e.cams.targets.shape[1] > 1 and "gradcam" in e.cams.maps:
            name = f"class_cams_{e.key}"
            explain_plots.plot_class_cams(
                images,
                to_input_size(e.cams.maps["gradcam"], size).numpy(),
                classes,
                captions,
                out_dir / f"{name}.png",
                f"{who}: Grad-CAM at {e.cams.layer} for every class",
            )
            figures[name] = f"{name}.png"
        if e.gradients:
            shown = {}
            for method in GRADIENT_METHODS:
                if method not in e.gradients:
                    continue
                maps = _shown(e.gradients[method], column)
                if maps.dim() == 4:  # guided maps (N, C, H, W): the authors' normalisation, colour kept
                    shown[method] = map_images(maps[:, None])[:, 0].numpy()
                else:
                    shown[method] = _minmax(maps).numpy()
            name = f"gradients_{e.key}"
            explain_plots.plot_gradient_maps(
                images,
                shown,
                captions,
                explained,
                out_dir / f"{name}.png",
                f"{who}: input gradients of the class score (guided backprop rule '{config.gbp_rule}')",
            )
            figures[name] = f"{name}.png"
        if e.top_maps is not None:
            name = f"feature_maps_{e.key}"
            explain_plots.plot_feature_maps(
                images,
                e.top_maps.numpy(),
                e.top_channels.numpy(),
                e.top_means.numpy(),
                captions,
                out_dir / f"{name}.png",
                f"{who}: the {e.top_maps.shape[1]} most active channels of {e.feature_layer} (mean activation)",
            )
            figures[name] = f"{name}.png"
        if e.receptive_field is not None:
            rf = e.receptive_field
            units = _units(e)
            boxes = [rf.box(y, x) for _, y, x in units]
            unit_maps = np.stack([e.features[i, c].numpy() for i, (c, _, _) in enumerate(units)])
            clipped = " (clipped to the image)" if max(rf.size) > max(size) else ""
            name = f"receptive_field_{e.key}"
            explain_plots.plot_receptive_fields(
                images,
                [(b.top, b.left, b.bottom, b.right) for b in boxes],
                units,
                unit_maps,
                captions,
                out_dir / f"{name}.png",
                f"{who}: receptive field of the most active unit of {rf.layer}\n(field {rf.size[0]}×{rf.size[1]} px"
                f"{clipped}, {rf.stride[0]} px between units)",
            )
            figures[name] = f"{name}.png"
    if len(explanations) == 2:
        base, slim = explanations
        maps = [to_input_size(_shown(e.cams.maps["gradcam"], e.shown_column()), size).numpy() for e in explanations]
        captions = []
        for e in explanations:
            probability = e.probabilities.gather(1, e.predicted[:, None])[:, 0]
            captions.append(
                [
                    f"{e.key}: {classes[int(p)]} ({float(q):.0%})\nGrad-CAM at {e.cams.layer}"
                    for p, q in zip(e.predicted, probability)
                ]
            )
        explain_plots.plot_base_vs_slim(
            images,
            maps[0],
            maps[1],
            [classes[int(t)] for t in labels],
            captions[0],
            captions[1],
            (base.predicted == labels).tolist(),
            (slim.predicted == labels).tolist(),
            out_dir / "base_vs_slim.png",
            f"Same test images, Grad-CAM for each model's own prediction\n"
            f"middle: base = {base.label}\nright: slim = {slim.label}",
            edges,
        )
        figures["base_vs_slim"] = "base_vs_slim.png"
    return figures


def _minmax(maps: torch.Tensor) -> torch.Tensor:
    low = maps.amin(dim=(-2, -1), keepdim=True)
    shifted = maps - low
    return shifted / (shifted.amax(dim=(-2, -1), keepdim=True) + 1e-12)
