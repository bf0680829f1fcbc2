"""Device selection shared by the stages."""

from __future__ import annotations

import torch

from layercut.contracts.errors import LayercutError


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA without one is an error, not a silent fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise LayercutError("--device cuda was asked for but no CUDA GPU is available; use --device cpu or auto")
    return torch.device(name)
