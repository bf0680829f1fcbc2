"""What the benchmarks print and record about the machine they ran on (shared by the bench scripts)."""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

import torch


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())


def describe(device: torch.device) -> str:
    """One line: torch version, device, threads and cores."""
    return (
        f"  torch {torch.__version__} | device {device} ({device_name(device)})"
        f" | torch threads {torch.get_num_threads()} | CPU cores {os.cpu_count()}"
    )


def record(benchmark: str, device: torch.device, args: argparse.Namespace) -> dict:
    """The start of a benchmark's --json payload: what ran where, with which settings."""
    return {
        "benchmark": benchmark,
        "torch": torch.__version__,
        "device": str(device),
        "device_name": device_name(device),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
