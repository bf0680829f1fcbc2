"""Checkpoints: one safetensors file holding the weights and, in its header, the JSON spec to rebuild the model.

Loading rebuilds the architecture from the spec and reads plain tensors, so it never unpickles
arbitrary objects. ``layercut`` checkpoints are readable by any safetensors tool.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from pydantic import ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model
from torch import nn

from layercut.contracts.errors import LayercutError
from layercut.contracts.spec import SPEC_KEY, ModelSpec
from layercut.stages.architectures import build_model
from layercut.stages.cutpoints import resolve_cut_point
from layercut.stages.truncation import DEFAULT_DROPOUT, truncate


def build_from_spec(spec: ModelSpec) -> nn.Module:
    """Rebuild the (untrained) module a spec describes: a base architecture, or a base cut at ``spec.cut_point``."""
    model = build_model(spec.architecture, spec.num_classes, pretrained=False)
    if spec.cut_point is None:
        return model
    point = resolve_cut_point(model, spec.cut_point.name)
    dropout = DEFAULT_DROPOUT if spec.head_dropout is None else spec.head_dropout
    return truncate(model, point, spec.num_classes, dropout=dropout, image_size=spec.image_size)


def save_checkpoint(model: nn.Module, spec: ModelSpec, path: str | Path) -> Path:
    """Write ``model``'s weights and ``spec`` to one safetensors file (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_model(model, str(tmp), metadata={SPEC_KEY: spec.model_dump_json()})
    tmp.replace(path)
    return path


def read_spec(path: str | Path) -> ModelSpec:
    """Read only the spec from a checkpoint's header (cheap: no tensors are loaded)."""
    path = Path(path)
    if not path.is_file():
        raise LayercutError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise LayercutError(f"{path} is not a safetensors checkpoint ({exc})") from None
    if SPEC_KEY not in metadata:
        raise LayercutError(
            f"{path} has no layercut spec in its header; was it written by layercut (or imported with a spec)?"
        )
    try:
        return ModelSpec.model_validate(json.loads(metadata[SPEC_KEY]))
    except (ValidationError, json.JSONDecodeError) as exc:
        raise LayercutError(f"the spec in {path} is invalid: {exc}") from None


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelSpec]:
    """Rebuild the model from the spec, load its weights and return it in eval mode."""
    spec = read_spec(path)
    model = build_from_spec(spec)
    try:
        load_model(model, str(path), strict=True, device=str(device))
    except (RuntimeError, SafetensorError) as exc:
        raise LayercutError(f"the weights in {path} do not match its spec ({spec.architecture}): {exc}") from None
    return model.to(device).eval(), spec
