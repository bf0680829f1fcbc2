"""What the benchmarks print and record about the machine they ran on (shared by the bench scripts)."""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

import torch


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> float | None:
    """The machine's total memory (Linux /proc/meminfo), or None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024**2
    except (OSError, ValueError, IndexError):
        pass
    return None


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()


def describe(device: torch.device) -> str:
    """One line: torch version, device, threads and cores."""
    return (
        f"  torch {torch.__version__} | device {device} ({device_name(device)})"
        f" | torch threads {torch.get_num_threads()} | CPU cores {os.cpu_count()} ({cpu_model()})"
        f" | memory {memory_gib() or 0:.0f} GiB"
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
        "cpu_model": cpu_model(),
        "memory_gib": memory_gib(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
