"""Commands that look without training: ``layers`` (an architecture's cut points), ``curve`` (an SSIM curve from
map images) and ``knee`` (re-pick the knee of a curve)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from layercut.cli import options
from layercut.cli.output import fail, out_console, print_curve, print_cut_points, print_json, print_knee
from layercut.contracts.configs import ARCHITECTURE_NAMES, AnalyzeConfig, DataConfig


def layers(
    arch: Optional[str] = typer.Option(
        None, "--arch", help=f"architecture: {options.ARCHITECTURES_HELP}", callback=options.known_architecture
    ),
    image_size: int = options.field_option(DataConfig, "image_size", default=224),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="list the cut points of this model instead"),
    list_architectures: bool = typer.Option(False, "--list", help="list the built-in architectures and stop"),
    as_json: bool = options.JSON,
) -> None:
    """List an architecture's cut points: index, module name, channels and spatial size."""
    if list_architectures:
        if as_json:
            print_json({"architectures": list(ARCHITECTURE_NAMES), "timm": "timm/<name>"})
        else:
            out_console.print("\n".join(ARCHITECTURE_NAMES))
            out_console.print("timm/<name>: any timm CNN, e.g. timm/convnext_atto (timm.list_models() names them)")
        return
    from layercut.stages.architectures import build_model, check_image_size
    from layercut.stages.checkpoint import load_checkpoint
    from layercut.stages.cutpoints import describe_cut_points

    if checkpoint is not None:
        model, spec = load_checkpoint(checkpoint)
        name, image_size = spec.architecture + (" (slim)" if spec.is_slim else ""), spec.image_size
    elif arch is not None:
        check_image_size(image_size, arch)
        model, name = build_model(arch, 2), arch
    else:
        fail("give --arch (`layercut layers --list` lists them) or --checkpoint")
    cut_points = [vars(info) for info in describe_cut_points(model, image_size)]
    if as_json:
        print_json({"architecture": name, "image_size": image_size, "cut_points": cut_points})
    else:
        print_cut_points(name, image_size, cut_points)


def curve(
    maps: Path = typer.Option(..., "--maps", help="folder of map images 1.png … N.png in depth order"),
    mode: str = options.field_option(AnalyzeConfig, "curve", "--mode"),
    data_range: float = options.field_option(
        AnalyzeConfig, "ssim_data_range", "--data-range", more_help=" (2 reproduces the paper's scikit-image 0.17)"
    ),
    as_json: bool = options.JSON,
) -> None:
    """Compute an SSIM curve from a folder of map images (all channels, floats in [0, 1])."""
    from layercut.stages.curves import CURVE_MODES, curve_from_matrix, read_map_folder
    from layercut.stages.ssim import similarity_matrix

    if mode not in CURVE_MODES:
        fail(f"--mode must be one of {', '.join(CURVE_MODES)}, got {mode!r}")
    stack = read_map_folder(maps)
    values = [float(v) for v in curve_from_matrix(similarity_matrix(stack, data_range=data_range), mode)]
    if as_json:
        print_json(
            {
                "curve": values,
                "mode": mode,
                "data_range": data_range,
                "maps": int(stack.shape[1]),
                "channels": int(stack.shape[2]),
            }
        )
    else:
        print_curve(values)


def read_curve(path: Path, mode: str | None) -> tuple[list[float], list[str] | None, str | None]:
    """The values of a curve file (a JSON list, an object with 'curve', or an analysis.json), the cut point names
    when the file has them, and the curve mode used (an analysis.json's own unless ``mode`` is given)."""
    if not path.is_file():
        fail(f"{path} does not exist")
    try:
        payload: Any = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        fail(f"{path} is not JSON ({exc})")
    if isinstance(payload, dict) and "curves" in payload:
        mode = mode or payload.get("knee", {}).get("curve_mode", "cut")
        if mode not in payload["curves"]:
            fail(f"{path} has no {mode!r} curve; it has {', '.join(payload['curves'])}")
        names = [point["name"] for point in payload.get("cut_points", [])] or None
        return payload["curves"][mode], names, mode
    if isinstance(payload, dict) and "curve" in payload:
        return payload["curve"], None, mode
    if isinstance(payload, list):
        return payload, None, mode
    fail(f"{path} holds no curve: give a JSON list of numbers, an object with 'curve', or an analysis.json")


def knee(
    curve: Path = typer.Option(
        ..., "--curve", help="a JSON list of values, a JSON object with a 'curve' list, or an analysis.json"
    ),
    mode: Optional[str] = typer.Option(
        None, "--mode", help="with an analysis.json: cut or adjacent (default: the one it used)"
    ),
    sensitivity: float = options.KNEE_SENSITIVITY,
    shape: str = options.field_option(AnalyzeConfig, "knee_curve", "--shape"),
    direction: str = options.field_option(AnalyzeConfig, "knee_direction", "--direction"),
    as_json: bool = options.JSON,
) -> None:
    """Re-pick the knee of a curve without recomputing maps (kneed, with a reported fallback)."""
    from layercut.stages.knee import find_knee

    values, names, mode = read_curve(curve, mode)
    result = find_knee(values, S=sensitivity, curve=shape, direction=direction)
    output = {
        "knee": result.index if result.found else None,
        "reason": result.reason,
        "chosen": result.index,
        "rule": result.rule,
        "cut_point": names[result.index] if names else None,
        "settings": {"S": sensitivity, "curve": shape, "direction": direction, "mode": mode},
    }
    if as_json:
        print_json(output)
    else:
        print_knee(output)
