"""``layercut import``: a model trained elsewhere (a ``torch.save``'d state dict or a safetensors file) becomes a
layercut checkpoint that every other command takes."""

from __future__ import annotations

from pathlib import Path

import typer

from layercut.cli import options
from layercut.cli.output import fail, human, out_console, print_result
from layercut.cli.parsing import parse_classes

IMAGENET_MEAN = "0.485,0.456,0.406"
IMAGENET_STD = "0.229,0.224,0.225"


def parse_floats(value: str, option: str) -> list[float]:
    """Comma-separated numbers (one per input channel); a bad one ends the command naming ``option``."""
    try:
        numbers = [float(part) for part in value.split(",") if part.strip()]
    except ValueError:
        fail(f"{option} takes comma-separated numbers, one per channel (got {value!r})")
    if not 1 <= len(numbers) <= 4:
        fail(f"{option} takes 1 to 4 numbers, one per input channel (got {len(numbers)})")
    return numbers


def import_command(
    weights: Path = typer.Option(
        ...,
        "--weights",
        help="the weights: a state dict saved with torch.save (.pt/.pth; also a checkpoint dict holding one under "
        "state_dict, model_state_dict, …) or a safetensors file; never unpickled beyond tensors",
    ),
    arch: str = typer.Option(
        ..., "--arch", help=f"the architecture: {options.ARCHITECTURES_HELP}", callback=options.known_architecture
    ),
    classes: str = typer.Option(
        ...,
        "--classes",
        help="the class names in the order of the model's outputs: comma-separated, or a text file, one per line",
    ),
    image_size: int = typer.Option(..., "--image-size", min=32, max=1024, help="the input size it was trained at"),
    out: Path = typer.Option(..., "--out", help="the layercut checkpoint to write (.safetensors)"),
    mean: str = typer.Option(IMAGENET_MEAN, "--mean", help="per-channel mean it was normalised with"),
    std: str = typer.Option(IMAGENET_STD, "--std", help="per-channel standard deviation it was normalised with"),
    as_json: bool = options.JSON,
) -> None:
    """Import a model trained elsewhere: check its weights against the architecture and write a checkpoint."""
    if not weights.is_file():
        fail(f"--weights: {weights} does not exist")
    names = parse_classes(classes)
    assert names is not None  # --classes is required
    means, stds = parse_floats(mean, "--mean"), parse_floats(std, "--std")
    from layercut.local import import_model  # torch loads only once the arguments are known to be good

    result = import_model(
        weights, out, arch=arch, classes=names, image_size=image_size, mean=means, std=stds, progress=False
    )
    if as_json:
        print_result(result)
        return
    found = f" (under {result.found_under!r})" if result.found_under else ""
    prefix = f", prefix {result.stripped_prefix!r} removed" if result.stripped_prefix else ""
    out_console.print(
        f"{arch}: {result.tensors} tensors from a {result.source_format} file{found}{prefix} match; "
        f"{human(result.params)} parameters, {result.num_classes} classes, {image_size} px → {out}"
    )
