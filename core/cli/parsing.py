"""From the strings a user types to the typed stage configs: class lists, method lists, targets, and the
DataConfig / TrainConfig several commands build alike. A value that cannot be read ends the command with one line.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from layercut.cli.output import fail
from layercut.contracts.configs import (
    DEFAULT_EXPLAIN_METHODS,
    EXPLAIN_METHODS,
    DataConfig,
    TrainConfig,
)


def parse_classes(value: str | None) -> list[str] | None:
    """Class names from a comma-separated list or a text file with one per line (at least two)."""
    if value is None:
        return None
    path = Path(value)
    if path.is_file():
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    else:
        names = [name.strip() for name in value.split(",") if name.strip()]
    if len(names) < 2:
        if len(names) == 1 and (path.suffix or "/" in value):
            fail(f"--classes: the file {value} does not exist (give a text file, one name per line, or a,b,c)")
        fail(f"--classes needs at least two class names, got {names}")
    return names


def parse_methods(value: str, option: str = "--methods") -> list[str]:
    """Explanation methods from a comma-separated list, "default" (all but Score-CAM) or "all"; unknown names end
    the command with a message naming ``option``."""
    if value.strip() == "all":
        return list(EXPLAIN_METHODS)
    if value.strip() == "default":
        return list(DEFAULT_EXPLAIN_METHODS)
    names = [name.strip() for name in value.split(",") if name.strip()]
    bad = [name for name in names if name not in EXPLAIN_METHODS]
    if bad or not names:
        fail(
            f"{option}: unknown method(s) {', '.join(bad) or repr(value)}; "
            f"choose from: default, all, {', '.join(EXPLAIN_METHODS)}"
        )
    return names


def parse_target(value: str, class_names: Callable[[], list[str]]) -> str | int:
    """'predicted', 'all', a class index, or one of the model's class names (turned into its index);
    ``class_names`` is called only for a name, since it reads the checkpoint."""
    if value in ("predicted", "all"):
        return value
    if value.isdigit():
        return int(value)
    names = class_names()
    if value in names:
        return names.index(value)
    fail(f"--target must be predicted, all, a class index or a class name ({', '.join(names)}); got {value!r}")


def data_config(
    source: str,
    image_size: int,
    seed: int,
    classes: str | None,
    skip_unreadable: bool,
    allow_mixed_sizes: bool,
    data_root: str | None,
) -> DataConfig:
    """The DataConfig of ``run`` and ``train`` from their data options."""
    return DataConfig(
        source=source,
        image_size=image_size,
        seed=seed,
        classes=parse_classes(classes),
        skip_unreadable=skip_unreadable,
        allow_mixed_sizes=allow_mixed_sizes,
        data_root=data_root,
    )


def train_config(
    epochs: int,
    batch_size: int,
    optimizer: str,
    lr: float | None,
    weight_decay: float,
    schedule: str,
    label_smoothing: float,
    augment: bool,
    patience: int,
    seed: int,
    device: str,
    head_init: str = "probe",
) -> TrainConfig:
    """The TrainConfig of ``run``, ``train``, ``retrain``, ``select`` and ``sweep``; a patience of 0 turns early
    stopping off."""
    return TrainConfig(
        head_init=head_init,
        epochs=epochs,
        batch_size=batch_size,
        optimizer=optimizer,
        lr=lr,
        weight_decay=weight_decay,
        schedule=schedule,
        label_smoothing=label_smoothing,
        augment=augment,
        patience=patience or None,
        seed=seed,
        device=device,
    )
