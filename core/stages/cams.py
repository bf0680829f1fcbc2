"""Class activation maps (CAMs) of one layer: Grad-CAM, Grad-CAM++, Layer-CAM, Eigen-CAM and Score-CAM.

Every map comes from one capture per batch of the layer's activations ``A`` (N, C, h, w) and, for the
gradient methods, the gradient ``G = dScore/dA`` of each target class score: one forward and one
``torch.autograd.grad`` per target for all gradient CAMs together. The formulas are those of
pytorch-grad-cam 1.5.7 (the tests compare against it), written batched in torch:

=============  ===================================================================================
method         map (before the final ReLU)
=============  ===================================================================================
``gradcam``    Σ_c mean_hw(G_c) · A_c
``gradcam++``  Σ_c w_c · A_c, w_c = Σ_hw relu(G) · α, α = G² / (2G² + Σ_hw(A) · G³ + 1e-6) (0 where G = 0)
``layercam``   Σ_c relu(G_c) · A_c
``eigencam``   the centred activations projected on their first principal component (no gradient);
               the sign is fixed so that the larger magnitude is positive (pytorch-grad-cam's sign
               correction), because an SVD's sign is arbitrary and differs between LAPACK builds
``scorecam``   Σ_c softmax_c(score(x · mask_c)) · A_c, mask_c = A_c upsampled to the input
               (bilinear, align_corners=True as pytorch-grad-cam) and min-max scaled; the N·C masked
               inputs run in chunks of ``score_batch_size`` so memory stays bounded
=============  ===================================================================================

Maps are returned ReLU'd at the layer's resolution (the "raw" maps); ``to_input_size`` upsamples them
bilinearly and min-max normalises each one for display. The model is in eval mode while explaining,
every module's mode and every parameter's ``requires_grad`` are restored afterwards, the forward hook is
always removed, and no parameter ``.grad`` is touched.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from layercut.contracts.errors import LayercutError
from layercut.stages.cutpoints import ACTIVATIONS, cut_points, feature_sequence
from layercut.stages.gbp import analysis_mode
from layercut.stages.progress import SILENT, Reporter

CAM_METHODS: tuple[str, ...] = ("gradcam", "gradcam++", "layercam", "eigencam", "scorecam")
GRADIENT_CAMS: tuple[str, ...] = ("gradcam", "gradcam++", "layercam")
Target = str | int | torch.Tensor
"""``"predicted"`` (the model's top class), a class index, ``"all"`` (every class) or an (N, T) index tensor."""

_GRADCAM_PP_EPS = 1e-6
_SCORECAM_EPS = 1e-8
_DISPLAY_EPS = 1e-7


# ----------------------------------------------------------------------------- layers


def layer_choices(model: nn.Module) -> list[str]:
    """The layer names a user is most likely to want: the model's feature sequence, in depth order."""
    try:
        return [name for name, _ in feature_sequence(model)]
    except LayercutError:
        return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def default_layer(model: nn.Module) -> str:
    """The last cut point: VGG's last ReLU, ResNet's last block, EfficientNet/MobileNet's last block,
    a slim model's own cut point. For other models, the last ``Conv2d`` (or the activation right after it).

    The last ReLU of VGG is the Grad-CAM paper's rectified last convolution, at twice the resolution of
    the final max-pool.
    """
    try:
        return cut_points(model).pop().name
    except LayercutError:
        pass
    leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]
    convs = [i for i, (_, m) in enumerate(leaves) if isinstance(m, nn.Conv2d)]
    if not convs:
        raise LayercutError(f"{type(model).__name__} has no Conv2d layer to explain; name a layer with --layer")
    last = convs[-1]
    if last + 1 < len(leaves) and isinstance(leaves[last + 1][1], ACTIVATIONS):
        last += 1
    return leaves[last][0]


def resolve_layer(model: nn.Module, name: str | None = None) -> tuple[str, nn.Module]:
    """``(name, module)`` of the layer called ``name`` (the default layer when ``None``).

    A name is looked up among ``model.named_modules()`` (``features.7``, ``layer4.1``, a graph rule's
    ``features.denseblock3``), then among the feature-sequence names (the base model's names inside a slim
    model); a group of the sequence (``layer4``) means its last element, whose output is the group's output.
    """
    if name is None:
        name = default_layer(model)
    try:
        sequence = feature_sequence(model)
    except LayercutError:
        sequence = []
    modules = dict(model.named_modules())
    if name in modules and name != "":  # the model's own module: what its forward runs (a graph rule's cut point)
        return name, modules[name]
    by_name = dict(sequence)
    if name in by_name:  # a slim model's layer, kept under the base model's name
        return name, by_name[name]
    group = [(n, m) for n, m in sequence if n.startswith(name + ".")]
    if group:
        return group[-1]
    choices = ", ".join(layer_choices(model))
    raise LayercutError(
        f"no layer named {name!r} in {type(model).__name__}; choose one of: {choices} "
        "(or any module name of model.named_modules())"
    )


@contextmanager
def capture_output(module: nn.Module, name: str, *, leaf: bool) -> Iterator[list[torch.Tensor]]:
    """Record ``module``'s output at every call into the yielded list; the hook is removed on exit.

    The module's consumers get a copy, so a following in-place operation (``ReLU(inplace=True)``,
    ``out += identity``) changes the copy and never the captured tensor. With ``leaf`` the capture is
    detached into a leaf that requires grad and the copy is taken from it: the forward below the layer
    builds no graph and ``autograd.grad(score, capture)`` is dScore/dA.
    """
    captured: list[torch.Tensor] = []

    def hook(mod: nn.Module, inputs: tuple, output: object) -> torch.Tensor:
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise LayercutError(
                f"layer {name!r} ({type(mod).__name__}) gives {shape}, not a (N, C, H, W) feature "
                "map; choose a convolutional layer or block"
            )
        kept = output.detach().requires_grad_(True) if leaf else output
        captured.append(kept)
        return kept.clone()

    handle = module.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def _single(captured: list[torch.Tensor], name: str) -> torch.Tensor:
    if len(captured) != 1:
        raise LayercutError(
            f"layer {name!r} runs {len(captured)} times in one forward pass; choose a layer "
            "that runs once (for example the block that contains it)"
        )
    return captured[0]


# ----------------------------------------------------------------------------- targets


def resolve_targets(logits: torch.Tensor, target: Target) -> torch.Tensor:
    """The (N, T) class indices to explain: T = 1 for "predicted" or a class index, T = classes for "all"."""
    n, k = logits.shape
    if isinstance(target, torch.Tensor):
        targets = target.to(device=logits.device, dtype=torch.long)
        if targets.dim() == 1:
            targets = targets[:, None]
        if targets.dim() != 2 or targets.shape[0] != n:
            raise LayercutError(f"targets must be ({n}, T) class indices, got shape {tuple(target.shape)}")
    elif target == "predicted":
        targets = logits.argmax(dim=1, keepdim=True)
    elif target == "all":
        targets = torch.arange(k, device=logits.device).expand(n, k)
    elif isinstance(target, int) and not isinstance(target, bool):
        targets = torch.full((n, 1), target, dtype=torch.long, device=logits.device)
    else:
        raise LayercutError(f"target must be 'predicted', 'all' or a class index, got {target!r}")
    if targets.numel() and not (0 <= int(targets.min()) and int(targets.max()) < k):
        raise LayercutError(f"class index out of range: the model has {k} classes (0..{k - 1})")
    return targets


def batch_target(target: Target, start: int, stop: int) -> Target:
    """The part of ``target`` for images ``start:stop`` (an index tensor is sliced; names and ints are shared)."""
    return target[start:stop] if isinstance(target, torch.Tensor) else target


# ----------------------------------------------------------------------------- formulas


def gradcam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """relu(Σ_c mean_hw(G_c) · A_c): (N, C, h, w) twice → (N, h, w)."""
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    return (weights * activations).sum(dim=1).clamp_min(0)


def gradcam_plus_plus(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhay et al., eq. 19) with pytorch-grad-cam's ε and zeroing where G = 0."""
    g2 = gradients.pow(2)
    g3 = g2 * gradients
    sum_a = activations.sum(dim=(2, 3), keepdim=True)
    alpha = g2 / (2 * g2 + sum_a * g3 + _GRADCAM_PP_EPS)
    alpha = torch.where(gradients != 0, alpha, torch.zeros_like(alpha))
    weights = (gradients.clamp_min(0) * alpha).sum(dim=(2, 3), keepdim=True)
    return (weights * activations).sum(dim=1).clamp_min(0)


def layercam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """relu(Σ_c relu(G_c) · A_c), the element-wise weighting of Layer-CAM (Jiang et al. 2021)."""
    return (gradients.clamp_min(0) * activations).sum(dim=1).clamp_min(0)


def eigencam(activations: torch.Tensor) -> torch.Tensor:
    """relu of the centred activations projected on their first principal component, sign-corrected.

    As pytorch-grad-cam's ``get_2d_projection_with_sign_correction``: rows are the h·w positions,
    columns the channels; computed in float64, returned in the activations' dtype.
    """
    n, c, h, w = activations.shape
    rows = torch.nan_to_num(activations.detach().double(), nan=0.0).flatten(2).transpose(1, 2)
    rows = rows - rows.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(rows, full_matrices=False)
    projection = (rows @ vh[:, 0, :, None]).squeeze(-1)
    flip = projection.amin(dim=1).abs() > projection.amax(dim=1).abs()
    projection = torch.where(flip[:, None], -projection, projection)
    return projection.view(n, h, w).clamp_min(0).to(activations.dtype)


def _scorecam_scores(
    model: nn.Module, images: torch.Tensor, activations: torch.Tensor, chunk: int, progress: Reporter, stage: str
) -> torch.Tensor:
    """Logits (N, C, K) of every image masked by each of its upsampled, min-max scaled channels."""
    n, c, h, w = activations.shape
    size = images.shape[-2:]
    flat = activations.reshape(n * c, 1, h, w)
    scores = []
    starts = range(0, n * c, chunk)
    with torch.no_grad():
        for step, start in enumerate(starts):
            stop = min(start + chunk, n * c)
            masks = F.interpolate(flat[start:stop], size=size, mode="bilinear", align_corners=True)
            low = masks.amin(dim=(2, 3), keepdim=True)
            high = masks.amax(dim=(2, 3), keepdim=True)
            masks = (masks - low) / (high - low + _SCORECAM_EPS)
            owners = torch.arange(start, stop, device=images.device) // c
            scores.append(model(images[owners] * masks).float())
            progress.update(stage, (step + 1) / len(starts), f"Score-CAM: masked inputs {stop}/{n * c}")
    return torch.cat(scores).view(n, c, -1)


def scorecam(activations: torch.Tensor, scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """relu(Σ_c softmax_c(score_c) · A_c) per target: scores (N, C, K), targets (N, T) → (N, T, h, w)."""
    n, c, _ = scores.shape
    picked = scores.gather(2, targets[:, None, :].expand(n, c, targets.shape[1]))  # (N, C, T)
    weights = torch.softmax(picked, dim=1).to(activations.dtype)
    return torch.einsum("nct,nchw->nthw", weights, activations).clamp_min(0)


_GRADIENT_FORMULAS = {"gradcam": gradcam, "gradcam++": gradcam_plus_plus, "layercam": layercam}


# ----------------------------------------------------------------------------- batched maps


@dataclass
class CamResult:
    """CAMs of one layer for N images, float32 on the CPU.

    ``maps[method]`` is (N, T, h, w), ReLU'd, at the layer's resolution; column t explains class
    ``targets[:, t]``. ``logits`` is (N, K); ``activations`` (N, C, h, w) only when asked for.
    """

    layer: str
    maps: dict[str, torch.Tensor]
    targets: torch.Tensor
    logits: torch.Tensor
    activations: torch.Tensor | None = None


def check_methods(methods: Sequence[str]) -> list[str]:
    """The requested CAM methods, unique and in order; a ``LayercutError`` names the valid ones."""
    bad = [m for m in methods if m not in CAM_METHODS]
    if bad:
        raise LayercutError(f"unknown CAM method(s) {', '.join(map(repr, bad))}; choose from: {', '.join(CAM_METHODS)}")
    return list(dict.fromkeys(methods))


def model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the model's first parameter (CPU float32 for a parameterless model)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.device, p.dtype
    return torch.device("cpu"), torch.float32


def _gradient_cams(
    logits: torch.Tensor, acts: torch.Tensor, targets: torch.Tensor, methods: list[str]
) -> dict[str, torch.Tensor]:
    """Every gradient CAM (N, T, h, w) from one ``autograd.grad`` of the batch's target scores per target column."""
    scores = logits.gather(1, targets)
    columns: dict[str, list[torch.Tensor]] = {m: [] for m in methods}
    for t in range(targets.shape[1]):
        (grads,) = torch.autograd.grad(scores[:, t].sum(), acts, retain_graph=t < targets.shape[1] - 1)
        for m in methods:
            columns[m].append(_GRADIENT_FORMULAS[m](acts.detach(), grads))
    return {m: torch.stack(parts, dim=1) for m, parts in columns.items()}


def compute_cams(
    model: nn.Module,
    images: torch.Tensor,
    methods: Sequence[str] = CAM_METHODS,
    *,
    layer: str | None = None,
    target: Target = "predicted",
    batch_size: int = 16,
    score_batch_size: int = 64,
    keep_activations: bool = False,
    reporter: Reporter | None = None,
    stage: str = "explain",
) -> CamResult:
    """CAMs of ``layer`` (default: ``default_layer``) for normalised ``images`` (N, C, H, W).

    Per batch: one forward capturing the layer, then one gradient of the target scores per target
    column for all gradient CAMs together; Eigen-CAM uses the same capture, Score-CAM adds its masked
    forwards. Images do not interact in eval mode, so the gradient of a batch sum holds each image's own.
    """
    methods = check_methods(methods)
    if images.dim() != 4:
        raise LayercutError(f"images must be a (N, C, H, W) tensor, got shape {tuple(images.shape)}")
    if batch_size < 1 or score_batch_size < 1:
        raise LayercutError(f"batch sizes must be at least 1, got {batch_size} and {score_batch_size}")
    reporter = reporter or SILENT
    name, module = resolve_layer(model, layer)
    device, dtype = model_device_dtype(model)
    gradient_methods = [m for m in methods if m in GRADIENT_CAMS]
    parts: dict[str, list[torch.Tensor]] = {m: [] for m in (*methods, "targets", "logits", "activations")}
    starts = list(range(0, images.shape[0], batch_size))
    with analysis_mode(model), torch.enable_grad():
        for b, start in enumerate(starts):
            x = images[start : start + batch_size].detach().to(device=device, dtype=dtype)
            with capture_output(module, name, leaf=True) as captured:
                logits = model(x)
            acts = _single(captured, name)
            targets = resolve_targets(logits.detach(), batch_target(target, start, start + x.shape[0]))
            batch = _gradient_cams(logits, acts, targets, gradient_methods) if gradient_methods else {}
            parts["logits"].append(logits.detach())
            del logits
            acts = acts.detach()
            if "eigencam" in methods:
                batch["eigencam"] = eigencam(acts)[:, None].expand(-1, targets.shape[1], -1, -1)
            if "scorecam" in methods:
                share = reporter.scaled(b / len(starts), (b + 1) / len(starts))
                scores = _scorecam_scores(model, x, acts, score_batch_size, share, stage)
                batch["scorecam"] = scorecam(acts, scores, targets)
            batch.update(targets=targets, activations=acts if keep_activations else None)
            for key, value in batch.items():
                if value is not None:
                    parts[key].append(value.cpu() if key == "targets" else value.float().cpu())
            reporter.update(stage, (b + 1) / len(starts), f"CAMs at {name}: batch {b + 1}/{len(starts)}")
    parts["logits"] = [p.float().cpu() for p in parts["logits"]]
    joined = {key: torch.cat(values) for key, values in parts.items() if values}
    return CamResult(
        layer=name,
        maps={m: joined[m] for m in methods},
        targets=joined["targets"],
        logits=joined["logits"],
        activations=joined.get("activations"),
    )


# ----------------------------------------------------------------------------- display


def upsample(maps: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bilinear resize (align_corners=False, no antialias) of the last two dimensions of ``maps``."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:]).float()
    return F.interpolate(flat, size=size, mode="bilinear", align_corners=False).reshape(*lead, *size)


def normalise_maps(maps: torch.Tensor) -> torch.Tensor:
    """Min-max scale every 2-D map to [0, 1]: (m − min) / (max − min + 1e-7), as pytorch-grad-cam."""
    low = maps.amin(dim=(-2, -1), keepdim=True)
    shifted = maps - low
    return shifted / (shifted.amax(dim=(-2, -1), keepdim=True) + _DISPLAY_EPS)


def to_input_size(maps: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Raw maps (…, h, w) → display maps (…, H, W) in [0, 1], per map, as pytorch-grad-cam's ``scale_cam_image``:
    min-max scaled, upsampled bilinearly, min-max scaled again (so the 1e-7 never distorts tiny raw maps)."""
    return normalise_maps(upsample(normalise_maps(maps.float()), size))
