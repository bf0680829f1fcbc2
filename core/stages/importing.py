"""Import a model trained elsewhere: a plain PyTorch ``state_dict`` (or a safetensors file) becomes a layercut checkpoint.

The weights are read without ever unpickling code (``torch.load(..., weights_only=True)``, or safetensors), found
inside the common checkpoint layouts (a bare state dict, or one under ``state_dict``, ``model_state_dict`` …, with a
``module.`` / ``_orig_mod.`` prefix from DataParallel or ``torch.compile``), and matched key by key and shape by
shape against the architecture the spec names, so a wrong file fails here, naming the keys, and never at the first
job that loads it.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from layercut.contracts.errors import LayercutError, MissingResourceError
from layercut.contracts.results import ImportResult
from layercut.contracts.spec import ModelSpec
from layercut.stages.checkpoint import build_from_spec, save_checkpoint
from layercut.stages.profiling import count_parameters
from layercut.stages.progress import SILENT, Reporter

NESTED_KEYS = ("state_dict", "model_state_dict", "model", "state_dict_ema", "model_ema", "net", "network", "weights")
"""Keys under which training scripts (Lightning, timm, torchvision references, plain loops) keep the state dict."""
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")
"""Prefixes that wrappers add to every key: DataParallel/DDP, ``torch.compile``, Lightning modules."""
SHOWN_KEYS = 5
"""How many mismatched keys an error names before giving the count."""
OPTIONAL_SUFFIXES = (".num_batches_tracked",)
"""Keys a state dict may lack without harm (BatchNorm's counter; absent in old checkpoints)."""
SAFETENSORS_SUFFIXES = (".safetensors",)
ZIP_MAGIC = b"PK\x03\x04"


def _named(keys: list[str]) -> str:
    """The first few keys, and how many there are in all."""
    shown = ", ".join(keys[:SHOWN_KEYS])
    more = f" … ({len(keys)} in all)" if len(keys) > SHOWN_KEYS else ""
    return f"{shown}{more}"


def _load_torch_file(path: Path) -> object:
    """``torch.load`` restricted to tensors and plain containers; a pickled module or class is refused, not run."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if refused is not None:
            raise LayercutError(
                f"{path.name} holds pickled Python objects ({refused.group(1)}), not only tensors, and layercut never "
                "unpickles code; save the weights alone and import that file: "
                "torch.save(model.state_dict(), 'weights.pt')"
            ) from None
        raise LayercutError(f"{path.name} cannot be read as a PyTorch checkpoint: {_first_line(exc)}") from None
    except Exception as exc:  # torch.load on arbitrary bytes raises almost any type; the file is the problem
        raise LayercutError(
            f"{path.name} is neither a safetensors file nor a state dict torch.save wrote ({_first_line(exc)})"
        ) from None


def _first_line(exc: BaseException) -> str:
    """An exception's first line, or its type when it has no message."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text else type(exc).__name__


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], str, str | None]:
    """The tensors of a weights file: ``(state dict, format, key it was found under or None)``.

    ``format`` is ``safetensors`` or ``torch``; a checkpoint dict holding the state dict under one of
    ``NESTED_KEYS`` is searched (one level, then two), and non-tensor entries beside the tensors are dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingResourceError(f"weights file {path} does not exist")
    with path.open("rb") as handle:
        head = handle.read(8)
    if path.suffix in SAFETENSORS_SUFFIXES or (
        len(head) == 8 and not head.startswith(ZIP_MAGIC) and head[:1] != b"\x80"
    ):
        try:
            return load_file(str(path)), "safetensors", None
        except (SafetensorError, OSError, ValueError) as exc:
            if path.suffix in SAFETENSORS_SUFFIXES:
                raise LayercutError(f"{path.name} is not a valid safetensors file ({exc})") from None
    loaded = _load_torch_file(path)
    state, found_under = _find_state_dict(loaded, path.name)
    return state, "torch", found_under


def _tensors_of(value: object) -> dict[str, torch.Tensor] | None:
    """A mapping whose values are mostly tensors, as a state dict (other entries dropped); None otherwise."""
    if not isinstance(value, Mapping) or not value:
        return None
    tensors = {str(k): v for k, v in value.items() if isinstance(v, torch.Tensor)}
    return tensors if tensors and len(tensors) * 2 >= len(value) else None


def _find_state_dict(loaded: object, name: str) -> tuple[dict[str, torch.Tensor], str | None]:
    """The state dict in what ``torch.load`` returned: the object itself, or under a common key."""
    direct = _tensors_of(loaded)
    if direct is not None:
        return direct, None
    if isinstance(loaded, Mapping):
        for key in NESTED_KEYS:
            inner = _tensors_of(loaded.get(key))
            if inner is not None:
                return inner, key
        for key in NESTED_KEYS:
            outer = loaded.get(key)
            if isinstance(outer, Mapping):
                for inner_key in NESTED_KEYS:
                    inner = _tensors_of(outer.get(inner_key))
                    if inner is not None:
                        return inner, f"{key}.{inner_key}"
        keys = ", ".join(map(str, list(loaded)[:10]))
        raise LayercutError(
            f"{name} is a dict without a state dict in it (its keys: {keys}); layercut looks for tensors at the "
            f"top level or under {', '.join(NESTED_KEYS)}. Save model.state_dict() and import that"
        )
    raise LayercutError(
        f"{name} holds a {type(loaded).__name__}, not a state dict; save model.state_dict() and import that"
    )


def _strip_wrappers(state: dict[str, torch.Tensor], expected: set[str]) -> tuple[dict[str, torch.Tensor], str]:
    """Drop a prefix every key shares (``module.``, ``_orig_mod.``, ``model.``) when that makes the keys match."""
    stripped = ""
    for _ in range(len(WRAPPER_PREFIXES)):
        if any(key in expected for key in state):
            break
        prefix = next((p for p in WRAPPER_PREFIXES if all(key.startswith(p) for key in state)), None)
        if prefix is None:
            break
        state = {key[len(prefix) :]: value for key, value in state.items()}
        stripped += prefix
    return state, stripped


def head_key(model: nn.Module) -> str | None:
    """The weight key of the model's classifier: its last ``nn.Linear`` (None when it has none)."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    return f"{last}.weight" if last is not None else None


def check_weights_match(model: nn.Module, state: Mapping[str, torch.Tensor], spec: ModelSpec, name: str) -> None:
    """Every key of ``model`` in ``state`` with its shape, no extra keys; the head sized to the spec's classes.

    The error names the first mismatched keys and their count, and says what to change."""
    expected = model.state_dict()
    head = head_key(model)
    if head is not None and head in state and head in expected and state[head].shape != expected[head].shape:
        outputs = state[head].shape[0]
        raise LayercutError(
            f"the classifier head in {name} ({head}) has {outputs} outputs but {spec.num_classes} classes were "
            f"given; give the {outputs} class names the model was trained on, in the order of its outputs"
        )
    missing = [k for k in expected if k not in state and not k.endswith(OPTIONAL_SUFFIXES)]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_named(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_named(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes: {_named(wrong)}")
    if problems:
        raise LayercutError(
            f"the weights in {name} do not fit {spec.architecture}"
            + (f" cut at {spec.cut_point.name}" if spec.cut_point else "")
            + f" with {spec.num_classes} classes: "
            + "; ".join(problems)
            + ". Check --arch (and the class count), or convert the keys to torchvision's names"
        )


def import_weights(weights: str | Path, spec: ModelSpec, out: str | Path, reporter: Reporter = SILENT) -> ImportResult:
    """Read ``weights``, check them against the model ``spec`` describes, and write a layercut checkpoint to ``out``.

    The checkpoint's parameters are counted as parameters (BatchNorm's running statistics are buffers, not
    parameters)."""
    weights, out = Path(weights), Path(out)
    reporter.update("import", 0.0, f"reading {weights.name}")
    state, file_format, found_under = read_weights(weights)
    model = build_from_spec(spec)
    expected = set(model.state_dict())
    state, stripped = _strip_wrappers(state, expected)
    reporter.update("import", 0.4, f"matching {len(state)} tensors against {spec.architecture}")
    check_weights_match(model, state, spec, weights.name)
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in state.values()})
    model.load_state_dict(state, strict=False)
    model.eval()
    reporter.update("import", 0.8, "writing the checkpoint")
    save_checkpoint(model, spec, out)
    reporter.update("import", 1.0, "done")
    return ImportResult(
        stage="import",
        checkpoint=str(out),
        architecture=spec.architecture,
        num_classes=spec.num_classes,
        image_size=spec.image_size,
        source_format=file_format,
        found_under=found_under,
        stripped_prefix=stripped or None,
        tensors=len(state),
        source_dtypes=dtypes,
        params=count_parameters(model),
        buffers=sum(b.numel() for b in model.buffers()),
    )
