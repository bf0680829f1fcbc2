"""The options several commands share, each declared once, with its default and help text taken from the
field of the config model it fills (``layercut.contracts.configs``), so the command line, the Python API and
the REST service describe a setting in the same words and start from the same value.

A command lists them as parameter defaults: ``epochs: int = options.EPOCHS``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import typer
from pydantic import BaseModel

from layercut.contracts.configs import (
    ARCHITECTURE_NAMES,
    EXPLAIN_METHODS,
    AnalyzeConfig,
    BudgetConfig,
    CompareConfig,
    DataConfig,
    ExplainConfig,
    SelectConfig,
    SweepConfig,
    TrainConfig,
    TruncateConfig,
    architecture_problem,
)
from layercut.contracts.sources import source_problem

OPTION_NAMES: defaultdict[tuple[str, str], set[str]] = defaultdict(set)
"""(config model name, field) → the options that fill it, to name the option in a validation error."""


def field_help(model: type[BaseModel], field: str) -> str:
    """The description of a config model's field: the help text of the option that fills it."""
    description = model.model_fields[field].description
    if not description:
        raise ValueError(f"{model.__name__}.{field} has no description to use as help text")
    return description


def field_default(model: type[BaseModel], field: str) -> Any:
    """The default of a config model's field: the default of the option that fills it."""
    return model.model_fields[field].default


def field_option(
    model: type[BaseModel],
    field: str,
    *names: str,
    default: Any = ...,
    more_help: str = "",
    **settings: Any,
) -> Any:
    """A ``typer.Option`` filling ``model.field``: the field's default (unless ``default`` is given) and description
    (with ``more_help`` appended for what only the command line does); ``names`` default to ``--field-name``."""
    names = names or ("--" + field.replace("_", "-"),)
    record_option(names[0].split("/")[0], (model, field))
    value = field_default(model, field) if default is ... else default
    return typer.Option(value, *names, help=field_help(model, field) + more_help, **settings)


def record_option(name: str, *fields: tuple[type[BaseModel], str]) -> None:
    """Note that option ``name`` fills these config model fields (for error messages that name the option)."""
    for model, field in fields:
        OPTION_NAMES[(model.__name__, field)].add(name)


def option_for(model_name: str, field: str) -> str:
    """The option that fills ``field`` of the config model ``model_name`` (``--field-name`` when several or none)."""
    names = OPTION_NAMES.get((model_name, field), set())
    return next(iter(names)) if len(names) == 1 else "--" + field.replace("_", "-")


ARCHITECTURES_HELP = "one of " + ", ".join(ARCHITECTURE_NAMES) + ", or a timm model as timm/<name>"


def known_architecture(name: str | None) -> str | None:
    """--arch checked before anything heavy is imported, so that a typo fails at once."""
    problem = architecture_problem(name) if name is not None else None
    if problem is not None:
        raise typer.BadParameter(problem)
    return name


def readable_source(source: str) -> str:
    """--data checked before anything heavy is imported: a known data set or an existing folder."""
    problem = source_problem(source)
    if problem is not None:
        raise typer.BadParameter(problem)
    return source


# Data: where the images come from (run, train).
DATA_SOURCE = field_option(DataConfig, "source", "--data", callback=readable_source)
IMAGE_SIZE = field_option(DataConfig, "image_size")
CLASSES = field_option(DataConfig, "classes", more_help="; comma-separated, or a text file with one name per line")
SEED = typer.Option(
    field_default(TrainConfig, "seed"),
    "--seed",
    help=f"{field_help(DataConfig, 'seed')}; {field_help(TrainConfig, 'seed')}",
)
record_option("--seed", (DataConfig, "seed"), (TrainConfig, "seed"))
SKIP_UNREADABLE = field_option(DataConfig, "skip_unreadable")
ALLOW_MIXED_SIZES = field_option(DataConfig, "allow_mixed_sizes")
DATA_ROOT = field_option(DataConfig, "data_root")

# Data of a command that reads a checkpoint (analyze, retrain, compare, explain).
CHECKPOINT_DATA = typer.Option(
    None,
    "--data",
    callback=lambda source: None if source is None else readable_source(source),
    help="read the images from this source instead of the data the model was trained on; "
    + field_help(DataConfig, "source"),
)
record_option("--data", (DataConfig, "source"))

# Training (run, train, retrain).
ARCH = typer.Option("vgg11", "--arch", help=f"architecture: {ARCHITECTURES_HELP}", callback=known_architecture)
EPOCHS = field_option(TrainConfig, "epochs")
BATCH_SIZE = field_option(TrainConfig, "batch_size")
OPTIMIZER = field_option(TrainConfig, "optimizer")
LEARNING_RATE = field_option(TrainConfig, "lr")
WEIGHT_DECAY = field_option(TrainConfig, "weight_decay")
SCHEDULE = field_option(TrainConfig, "schedule")
LABEL_SMOOTHING = field_option(TrainConfig, "label_smoothing")
AUGMENT = field_option(TrainConfig, "augment", "--augment/--no-augment")
PATIENCE = field_option(TrainConfig, "patience", more_help=" (0: never)")
DEVICE = field_option(TrainConfig, "device")
HEAD_INIT = field_option(TrainConfig, "head_init")
PRETRAINED = typer.Option(
    False, "--pretrained", help="start from torchvision's ImageNet weights (must be in the local TORCH_HOME cache)"
)

# Analysis (run, analyze).
PROBES_PER_CLASS = field_option(AnalyzeConfig, "probes_per_class")
MAX_PROBES = field_option(AnalyzeConfig, "max_probes")
GBP_RULE = field_option(AnalyzeConfig, "gbp_rule")
MEMORY_BUDGET = field_option(AnalyzeConfig, "memory_budget_mb", "--memory-budget", metavar="MIB")
KNEE_CURVE = field_option(AnalyzeConfig, "curve")
SSIM_DATA_RANGE = field_option(AnalyzeConfig, "ssim_data_range", "--data-range")
KNEE_SENSITIVITY = field_option(AnalyzeConfig, "knee_sensitivity", "--sensitivity", "-S")

# Truncation (run, truncate) and the accuracy budget (run, select, sweep).
CUT = field_option(TruncateConfig, "cut", more_help=" (see `layercut layers`)")
TRUNCATE_CUT = field_option(
    TruncateConfig, "cut", default="knee", more_help=" (see `layercut layers`; auto needs `layercut select`)"
)
MAX_DROP = field_option(BudgetConfig, "max_drop")
MIN_ACCURACY = field_option(BudgetConfig, "min_accuracy")
MAX_RETRAINS = field_option(SelectConfig, "max_retrains")
SWEEP_CUTS = field_option(SweepConfig, "cuts")
DROPOUT = field_option(TruncateConfig, "dropout")

# Explanations (run, explain): the methods are parsed from a comma-separated list (see configs.parse_methods).
METHODS_HELP = f"comma-separated: {', '.join(EXPLAIN_METHODS)}, or all; {field_help(ExplainConfig, 'methods')}"

# Every command.
JSON = typer.Option(False, "--json", help="print one JSON object on stdout instead of a table")
QUIET = typer.Option(False, "--quiet", "-q", help="no progress bars")

ONNXRUNTIME = field_option(
    CompareConfig,
    "onnxruntime",
    "--onnxruntime/--no-onnxruntime",
    more_help="; --no-onnxruntime times torch only (no ONNX export of the two models)",
)
