"""Guided backpropagation (GBP) maps of every cut point, and their normalised "map images".

The GBP map of cut point l for image x is the gradient of the sum of all activations at l with
respect to x, where every activation below l back-propagates only guided gradient (docs/design.md §1).
One forward per batch captures every cut point; one ``torch.autograd.grad`` per cut point follows.

How an activation back-propagates is the *rule* (``g`` is the gradient arriving at the
activation's output, ``x`` its input, ``f`` the activation):

==============  ===================================  ============================================
rule            nn.ReLU                              other activations (ReLU6, LeakyReLU, ELU,
                                                     SiLU, GELU, Hardswish, Mish, Tanh)
==============  ===================================  ============================================
``relu``        g · 1[x>0] · 1[g>0]                  g · 1[x>0] · 1[g>0]: every activation is
(default)                                            treated as a ReLU gate (the authors' rule);
                                                     the forward still computes f(x)
``derivative``  g · 1[x>0] · 1[g>0]                  g · f'(x) · 1[g>0]: the true derivative,
                                                     then only positive gradient is kept
``ungated``     g · 1[x>0] · 1[g>0]                  g · f'(x): the plain gradient, as captum's
                                                     ``GuidedBackprop`` does (it only overrides
                                                     ``nn.ReLU``)
==============  ===================================  ============================================

On a network whose only activation is ``nn.ReLU`` the three rules give the same map. The activation
modules affected are those of ``cutpoints.ACTIVATIONS`` (and their subclasses); other element-wise
modules, such as the ``Sigmoid`` gates of squeeze-excitation blocks, keep their plain gradient.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from layercut.contracts.errors import LayercutError
from layercut.stages.cutpoints import ACTIVATIONS, cut_points, forward_features, modules_in_use
from layercut.stages.progress import SILENT, Reporter

GBP_RULES: tuple[str, ...] = ("relu", "derivative", "ungated")
DEFAULT_RULE = "relu"

ActivationFn = Callable[[torch.Tensor], torch.Tensor]


def check_rule(rule: str) -> None:
    """Raise a ``LayercutError`` naming the valid rules when ``rule`` is not one of them."""
    if rule not in GBP_RULES:
        raise LayercutError(f"unknown guided-backprop rule {rule!r}; choose one of: {', '.join(GBP_RULES)}")


Checkpoint = Callable[[], None]
"""Called inside the backward at every guided activation (a cancellation point: it may raise ``Cancelled``)."""


def _no_checkpoint() -> None:
    return None


class _ReluGate(torch.autograd.Function):
    """Forward ``f(x)``; backward ``g · 1[x>0] · 1[g>0]`` (guided ReLU, whatever ``f`` is)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, fn: ActivationFn, checkpoint: Checkpoint) -> torch.Tensor:  # type: ignore[override]
        # The input gate is computed once here (the backward runs once per deeper cut point) and kept as bool:
        # a quarter of the memory of a float32 mask, and the graph of a batch holds one per activation.
        ctx.save_for_backward(x > 0)
        ctx.checkpoint = checkpoint
        return fn(x)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        ctx.checkpoint()  # a backward from a deep cut point can take seconds: stop inside it when cancelled
        (open_gate,) = ctx.saved_tensors
        return grad.clamp_min(0).mul_(open_gate), None, None


class _GuidedDerivative(torch.autograd.Function):
    """Forward ``f(x)``; backward ``g · f'(x) · 1[g>0]`` (the element-wise derivative, recomputed)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, fn: ActivationFn, checkpoint: Checkpoint) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.fn = fn
        ctx.checkpoint = checkpoint
        return fn(x)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        ctx.checkpoint()
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            leaf = x.detach().requires_grad_()
            (grad_in,) = torch.autograd.grad(ctx.fn(leaf), leaf, grad.clamp_min(0))
        return grad_in, None, None


class _CheckpointPass(torch.autograd.Function):
    """Forward the input unchanged (a view); backward the gradient unchanged after calling ``checkpoint``: a
    cancellation point for activations whose own backward is kept (``ungated``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, checkpoint: Checkpoint) -> torch.Tensor:  # type: ignore[override]
        ctx.checkpoint = checkpoint
        return x.view_as(x)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        ctx.checkpoint()
        return grad, None


def _out_of_place(module: nn.Module, original: ActivationFn) -> ActivationFn:
    """The module's own forward, made safe for ``inplace=True`` modules by working on a copy."""
    if not getattr(module, "inplace", False):
        return original

    def forward(x: torch.Tensor) -> torch.Tensor:
        return original(x.clone())

    return forward


def _guided_forward(module: nn.Module, original: ActivationFn, rule: str, checkpoint: Checkpoint) -> ActivationFn:
    """The replacement ``forward`` of one activation module under ``rule``."""
    plain = _out_of_place(module, original)
    if isinstance(module, nn.ReLU) or rule == "relu":
        return lambda x: _ReluGate.apply(x, plain, checkpoint)
    if rule == "derivative":
        return lambda x: _GuidedDerivative.apply(x, plain, checkpoint)
    if checkpoint is _no_checkpoint:
        return plain  # "ungated": the activation's own gradient
    return lambda x: plain(_CheckpointPass.apply(x, checkpoint))


@contextmanager
def guided_activations(
    model: nn.Module, rule: str = DEFAULT_RULE, checkpoint: Checkpoint = _no_checkpoint
) -> Iterator[nn.Module]:
    """Patch every activation module's ``forward`` with its guided version; restore them on exit.

    The patch lives on the module instance, so a module applied several times (a ResNet block's
    ReLU) is guided at every use, and no hooks are registered. ``checkpoint`` is called in the backward of
    every activation (under ``ungated``, non-ReLU activations keep their own backward behind a pass-through that
    calls it).
    """
    check_rule(rule)
    patched: list[tuple[nn.Module, ActivationFn | None]] = []
    try:
        for module in modules_in_use(model):
            if isinstance(module, ACTIVATIONS):
                previous = module.__dict__.get("forward")
                module.forward = _guided_forward(module, module.forward, rule, checkpoint)
                patched.append((module, previous))
        yield model
    finally:
        for module, previous in reversed(patched):
            if previous is None:
                del module.forward
            else:
                module.forward = previous


@contextmanager
def _analysis_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode with parameter gradients off; every module's mode and ``requires_grad`` restored on exit."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for m, training in modes:
            m.training = training
        for p, requires_grad in flags:
            p.requires_grad_(requires_grad)


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the model's first parameter (CPU float32 for a parameterless model)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.device, p.dtype
    return torch.device("cpu"), torch.float32


def _resolve_indices(model: nn.Module, cut_indices: list[int] | tuple[int, ...] | set[int] | None) -> list[int]:
    """The requested cut indices, sorted and unique (all cut points when ``None``)."""
    count = len(cut_points(model))
    if cut_indices is None:
        return list(range(count))
    indices = sorted({int(i) for i in cut_indices})
    bad = [i for i in indices if not 0 <= i < count]
    if bad:
        raise LayercutError(f"cut point indices {bad} are out of range: this model has {count} (0..{count - 1})")
    if not indices:
        raise LayercutError("no cut points requested: cut_indices is empty")
    return indices


def _check_images(images: torch.Tensor, batch_size: int) -> None:
    if images.dim() != 4:
        raise LayercutError(f"images must be a (N, C, H, W) tensor, got shape {tuple(images.shape)}")
    if batch_size < 1:
        raise LayercutError(f"batch_size must be at least 1, got {batch_size}")


def _throttled_check(reporter: Reporter, every: float = 0.2) -> Checkpoint:
    """``reporter.check("analyze")`` at most every ``every`` seconds (it is called at every guided activation)."""
    last = [time.monotonic()]

    def check() -> None:
        now = time.monotonic()
        if now - last[0] >= every:
            last[0] = now
            reporter.check("analyze")

    return check


def guided_backprop_batches(
    model: nn.Module,
    images: torch.Tensor,
    *,
    rule: str = DEFAULT_RULE,
    batch_size: int = 32,
    cut_indices: list[int] | tuple[int, ...] | set[int] | None = None,
    reporter: Reporter | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Raw GBP maps batch by batch: ``(start, maps)`` with maps float32 on the CPU, shaped (B images, L cut
    points in depth order, C, H, W), for ``images[start : start + B]``.

    Per batch: one forward capturing every requested cut point, then one gradient of each cut point's
    activation sum with respect to the input, deepest first: once a cut point's map is taken, the graph above
    the next shallower one is no longer referenced and is freed. Images in a batch do not interact in eval
    mode, so the gradient of the batch sum holds each image's own map. Only one batch's graph and maps are
    alive at a time, so memory is bounded by ``batch_size``, not by the number of images.
    """
    check_rule(rule)
    _check_images(images, batch_size)
    reporter = reporter or SILENT
    indices = _resolve_indices(model, cut_indices)
    device, dtype = _model_device_dtype(model)
    n = images.shape[0]
    starts = list(range(0, n, batch_size))
    steps = len(starts) * len(indices)
    reporter.update("analyze", 0.0, f"guided backprop: {n} images, {len(indices)} cut points")
    with _analysis_mode(model), guided_activations(model, rule, _throttled_check(reporter)), torch.enable_grad():
        for b, start in enumerate(starts):
            x = images[start : start + batch_size].detach().to(device=device, dtype=dtype).requires_grad_()
            maps = torch.empty((x.shape[0], len(indices), *x.shape[1:]), dtype=torch.float32)
            outputs = forward_features(model, x, keep=set(indices))
            for done_here, j in enumerate(reversed(range(len(indices))), start=1):
                (grad,) = torch.autograd.grad(outputs.pop(indices[j]).sum(), x, retain_graph=j > 0)
                maps[:, j] = grad.detach().to("cpu", torch.float32)
                del grad
                reporter.update(
                    "analyze",
                    (b * len(indices) + done_here) / steps,
                    f"guided backprop: cut point {j + 1}/{len(indices)}, batch {b + 1}/{len(starts)}",
                )
            del outputs, x
            yield start, maps


def guided_backprop_maps(
    model: nn.Module,
    images: torch.Tensor,
    *,
    rule: str = DEFAULT_RULE,
    batch_size: int = 32,
    cut_indices: list[int] | tuple[int, ...] | set[int] | None = None,
    reporter: Reporter | None = None,
) -> torch.Tensor:
    """Raw GBP maps of every image, float32 on the CPU, shaped (N images, L cut points in depth order, C, H, W):
    ``guided_backprop_batches`` gathered into one tensor (the analysis streams the batches instead)."""
    _check_images(images, batch_size)
    layers = len(_resolve_indices(model, cut_indices))
    maps = torch.empty((images.shape[0], layers, *images.shape[1:]), dtype=torch.float32)
    for start, batch in guided_backprop_batches(
        model, images, rule=rule, batch_size=batch_size, cut_indices=cut_indices, reporter=reporter
    ):
        maps[start : start + batch.shape[0]] = batch
    return maps


def gbp_graph_bytes(model: nn.Module, image_shape: tuple[int, int, int], rule: str = DEFAULT_RULE) -> int:
    """Bytes one image's guided-backprop graph holds (saved tensors, cut-point outputs and the largest
    gradient of the backward; the model's own weights not counted), measured by one forward of one zero image
    with a hook on every saved tensor."""
    device, dtype = _model_device_dtype(model)
    weights = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    largest = 0
    with _analysis_mode(model), guided_activations(model, rule), torch.enable_grad():
        x = torch.zeros((1, *image_shape), device=device, dtype=dtype, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            outputs = forward_features(model, x)
        for output in outputs.values():
            storage = output.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
            largest = max(largest, output.numel() * output.element_size())
        del outputs, x
    return sum(storages.values()) + 2 * largest


def map_images(raw: torch.Tensor, *, grayscale: bool = False, eps: float = 1e-7) -> torch.Tensor:
    """The authors' ``deprocess_image`` per map: (g − mean)/(std + eps)·0.25 + 0.5 clipped to [0, 1].

    Mean and population std are taken over each whole (image, cut point) map, in float64; the result
    is float32 in the input's (N, L, C, H, W) layout (C = 1 with ``grayscale``, the channel mean).
    """
    if raw.dim() != 5:
        raise LayercutError(f"raw maps must be a (N, L, C, H, W) tensor, got shape {tuple(raw.shape)}")
    if grayscale:
        raw = raw.mean(dim=2, keepdim=True, dtype=torch.float64)
    out = torch.empty(raw.shape, dtype=torch.float32, device=raw.device)
    for i in range(raw.shape[0]):
        g = raw[i].to(torch.float64)
        std, mean = torch.std_mean(g, dim=(1, 2, 3), correction=0, keepdim=True)
        out[i] = ((g - mean) / (std + eps) * 0.25 + 0.5).clamp(0.0, 1.0)
    return out


@contextmanager
def analysis_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode with parameter gradients off for any analysis of ``model`` (CAMs, explanations too);
    every module's mode and every parameter's ``requires_grad`` are restored on exit, even after an error."""
    with _analysis_mode(model):
        yield
