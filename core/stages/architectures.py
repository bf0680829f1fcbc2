"""The supported architectures: every CNN classifier of torchvision, any timm model (``timm/<name>``), and a small
plain CNN for fast runs.

Every model is built with its last layer sized to the dataset's classes. Pretrained weights are
taken only from torchvision's local cache (``$TORCH_HOME/hub/checkpoints``), never downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision import models as tvm

from layercut.contracts.configs import ARCHITECTURE_NAMES, TIMM_PREFIX, architecture_problem
from layercut.contracts.errors import LayercutError, MissingResourceError

MIN_IMAGE_SIZE = 32
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SmallCNN(nn.Module):
    """A plain four-block CNN (conv-BN-ReLU, max-pool between blocks) for fast runs and tests."""

    def __init__(self, num_classes: int, width: int = 16, in_channels: int = 3) -> None:
        super().__init__()
        widths = [width, width * 2, width * 4, width * 4]
        layers: list[nn.Module] = []
        previous = in_channels
        for i, w in enumerate(widths):
            if i > 0:
                layers.append(nn.MaxPool2d(2))
            layers += [nn.Conv2d(previous, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            previous = w
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(previous, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


@dataclass(frozen=True)
class TorchvisionOptions:
    """How layercut builds one torchvision architecture, beyond ``torchvision.models.get_model(name)``."""

    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the builder for a model to train (GoogLeNet and Inception without auxiliary heads)."""
    pretrained_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for the model the ImageNet weights are loaded into (they carry the auxiliary heads)."""
    min_image_size: int = MIN_IMAGE_SIZE


_NO_AUX = {"aux_logits": False, "init_weights": True}
_WITH_AUX = {"aux_logits": True, "init_weights": False}

TORCHVISION_OPTIONS: dict[str, TorchvisionOptions] = {
    "googlenet": TorchvisionOptions(_NO_AUX, _WITH_AUX),
    "inception_v3": TorchvisionOptions(_NO_AUX, _WITH_AUX, min_image_size=75),
    "alexnet": TorchvisionOptions(min_image_size=63),
}
"""The torchvision architectures that need more than their name (every other built-in name is built as it is)."""

ARCHITECTURES: tuple[str, ...] = ARCHITECTURE_NAMES
assert set(tvm.list_models(module=tvm)) >= set(ARCHITECTURES) - {"smallcnn"}, "ARCHITECTURE_NAMES names no model"


def is_timm(arch: str) -> bool:
    return arch.startswith(TIMM_PREFIX)


def check_architecture(arch: str) -> None:
    """A ``LayercutError`` saying what to write when ``arch`` names no architecture (timm names: also unknown ones)."""
    problem = architecture_problem(arch)
    if problem is not None:
        raise LayercutError(problem)
    if is_timm(arch):
        _timm_name(arch)


def min_image_size(arch: str) -> int:
    """The smallest input ``arch`` runs on."""
    options = TORCHVISION_OPTIONS.get(arch)
    return options.min_image_size if options is not None else MIN_IMAGE_SIZE


def check_image_size(image_size: int, arch: str | None = None) -> None:
    smallest = min_image_size(arch) if arch is not None else MIN_IMAGE_SIZE
    if image_size < smallest:
        what = f" for {arch}" if arch is not None and smallest > MIN_IMAGE_SIZE else ""
        raise LayercutError(f"image size {image_size} is too small{what}: the smallest supported is {smallest} px")


def _timm_name(arch: str) -> str:
    """The timm model name of ``timm/<name>``; an error naming close matches when timm has no such model."""
    try:
        import timm
    except ImportError:
        raise MissingResourceError(f"{arch} needs timm: pip install timm") from None
    name = arch.removeprefix(TIMM_PREFIX)
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][:6]}*")[:8]
        hint = f" (close: {', '.join('timm/' + n for n in close)})" if close else ""
        raise LayercutError(f"timm has no model {name!r}{hint}")
    return name


def pretrained_weights_path(arch: str) -> Path:
    """Where torchvision keeps the default pretrained weights of ``arch`` once downloaded."""
    url = tvm.get_model_weights(arch).DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


TIMM_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
"""The files a timm model's Hugging Face repository keeps its weights in, preferred first."""


def timm_pretrained_file(arch: str) -> Path:
    """The cached pretrained weights of a timm model: its default tag's file in the local Hugging Face cache
    (``HF_HOME``/``HF_HUB_CACHE``), where ``huggingface-cli download`` or timm itself put it. layercut never
    downloads them."""
    import timm
    from huggingface_hub import constants, try_to_load_from_cache

    name = _timm_name(arch)
    repo = getattr(timm.models.get_pretrained_cfg(name), "hf_hub_id", None)
    if not repo:
        raise LayercutError(f"{arch}: timm names no Hugging Face weights for it; train without --pretrained")
    for filename in TIMM_WEIGHT_FILES:
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            return Path(found)
    raise MissingResourceError(
        f"pretrained weights for {arch} are not in the local Hugging Face cache ({constants.HF_HUB_CACHE}): on a "
        f"machine with internet run `huggingface-cli download {repo} {TIMM_WEIGHT_FILES[0]}` and copy its cache "
        "here (or set HF_HOME to it), or train from scratch without --pretrained"
    )


def replace_head(model: nn.Module, num_classes: int) -> None:
    """Resize the model's classifier (its last layer with weights: a Linear, or SqueezeNet's 1x1 convolution) to
    ``num_classes`` outputs, freshly initialised."""
    name, last = [(n, m) for n, m in model.named_modules() if n and any(True for _ in m.parameters(recurse=False))][-1]
    if isinstance(last, nn.Linear):
        new: nn.Module = nn.Linear(last.in_features, num_classes, bias=last.bias is not None)
    elif isinstance(last, nn.Conv2d) and last.kernel_size == (1, 1):
        new = nn.Conv2d(last.in_channels, num_classes, 1)
    else:
        raise LayercutError(
            f"cannot resize the classifier of {type(model).__name__}: its last layer {name} is a {type(last).__name__}"
        )
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, new)


def check_pretrained(arch: str) -> Path:
    """Where the cached ImageNet weights of ``arch`` are; an error saying where to put them when they are not
    (layercut never downloads weights)."""
    check_architecture(arch)
    if arch == "smallcnn":
        raise LayercutError("smallcnn has no pretrained weights; drop --pretrained")
    if is_timm(arch):
        return timm_pretrained_file(arch)
    path = pretrained_weights_path(arch)
    if not path.is_file():
        raise MissingResourceError(
            f"pretrained weights for {arch} are not in the local cache: put {path.name} "
            f"(from {tvm.get_model_weights(arch).DEFAULT.url}) into {path.parent} (or set TORCH_HOME to a folder "
            "whose hub/checkpoints holds it), or train from scratch without --pretrained"
        )
    return path


def build_model(arch: str, num_classes: int, pretrained: bool = False) -> nn.Module:
    """Build ``arch`` for ``num_classes`` classes, loading cached ImageNet weights if ``pretrained``."""
    check_architecture(arch)
    if num_classes < 2:
        raise LayercutError(f"a classifier needs at least 2 classes, got {num_classes}")
    if pretrained:
        path = check_pretrained(arch)
    if arch == "smallcnn":
        return SmallCNN(num_classes)
    if is_timm(arch):
        import timm

        if not pretrained:
            return timm.create_model(_timm_name(arch), pretrained=False, num_classes=num_classes)
        # the cached file only, never the hub; timm drops the ImageNet head when num_classes differs
        overlay = {"file": str(path), "hf_hub_id": None, "url": None}
        return timm.create_model(
            _timm_name(arch), pretrained=True, num_classes=num_classes, pretrained_cfg_overlay=overlay
        )
    options = TORCHVISION_OPTIONS.get(arch, TorchvisionOptions())
    if not pretrained:
        return tvm.get_model(arch, weights=None, num_classes=num_classes, **options.kwargs)
    model = tvm.get_model(arch, weights=None, **options.pretrained_kwargs)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    if options.pretrained_kwargs.get("aux_logits"):  # as torchvision does for a model asked without them
        model.aux_logits = False
        for aux in ("aux1", "aux2", "AuxLogits"):  # GoogLeNet's two, Inception v3's one
            if hasattr(model, aux):
                setattr(model, aux, None)
    replace_head(model, num_classes)
    return model
