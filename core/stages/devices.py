"""Device selection shared by the stages."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from layercut.contracts.errors import LayercutError


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA without one is an error, not a silent fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise LayercutError("--device cuda was asked for but no CUDA GPU is available; use --device cpu or auto")
    return torch.device(name)


@contextmanager
def ieee_float32(device: torch.device) -> Iterator[None]:
    """Full float32 arithmetic for cuDNN convolutions and CUDA matmuls while the block runs on ``device``.

    torch lets cuDNN convolutions use TF32 by default (10-bit mantissa on Ampere and later GPUs), which moves GBP
    maps by ~1e-3; the analysis turns it off so that a GPU's maps equal the CPU's to float32 rounding. The
    previous settings are restored on exit. Nothing changes on the CPU.
    """
    if device.type != "cuda":
        yield
        return
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):  # torch ≥ 2.9
        matmul = torch.backends.cuda.matmul
        saved = (conv.fp32_precision, matmul.fp32_precision)
        conv.fp32_precision, matmul.fp32_precision = "ieee", "ieee"
        try:
            yield
        finally:
            conv.fp32_precision, matmul.fp32_precision = saved
        return
    saved_flags = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved_flags
