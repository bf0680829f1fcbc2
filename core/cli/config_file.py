"""``--config FILE``: a command's options read from a YAML or TOML file, so that a run can be kept and repeated.

The file is a flat mapping of option names to values (``epochs: 3``, ``image-size = 32``). Its values become
the command's defaults (click's ``default_map``), so an option given on the command line overrides the file.
A key that is not an option of the command, or a value that option cannot take, ends the command with one line
naming the key and exit status 2.
"""

from __future__ import annotations

import sys
from difflib import get_close_matches
from pathlib import Path
from typing import Any

import typer
import yaml

from layercut.cli.output import fail

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

CONFIG_SUFFIXES = {".yaml": "YAML", ".yml": "YAML", ".toml": "TOML"}
NOT_FROM_A_FILE = {"config", "help"}
"""Options a config file cannot set."""


def read_mapping(path: Path) -> dict[str, Any]:
    """The top-level mapping of a YAML or TOML file, chosen by its extension."""
    kind = CONFIG_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        fail(f"--config {path}: give a .yaml, .yml or .toml file")
    if not path.is_file():
        fail(f"--config {path} does not exist")
    try:
        if kind == "TOML":
            payload = tomllib.loads(path.read_text(encoding="utf-8"))
        else:
            payload = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, yaml.YAMLError, UnicodeDecodeError) as exc:
        fail(f"--config {path} is not valid {kind}: {' '.join(str(exc).split())}")
    if payload is None:
        return {}
    if not isinstance(payload, dict):
        fail(f"--config {path}: expected a mapping of option names to values, got a {type(payload).__name__}")
    return payload


def option_key(name: str) -> str:
    """A key of the file in one spelling: ``image_size``, ``image-size`` and ``--image-size`` are one key."""
    return name.lstrip("-").replace("_", "-")


def options_by_key(command: Any) -> dict[str, Any]:
    """The command's options a file may set, by key: each long option name without its dashes."""
    return {
        option_key(name): param
        for param in command.params
        for name in param.opts
        if name.startswith("--") and option_key(name) not in NOT_FROM_A_FILE
    }


def file_value(value: Any) -> Any:
    """A value as the option would take it on the command line: a list becomes a comma-separated string."""
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    return value


def check_value(ctx: typer.Context, param: Any, value: Any) -> None:
    """Raise ``typer.BadParameter`` when ``param`` cannot take ``value``, as it would for the command line."""
    runtime_param = getattr(param, "get_runtime_param", None)
    if runtime_param is not None:  # newer typer (its own copy of click) converts values itself
        runtime_param().coerce(value, param=param, ctx=ctx)
    else:  # older typer: click's parameter types
        param.type_cast_value(ctx, value)


def defaults_from_file(ctx: typer.Context, path: Path) -> dict[str, Any]:
    """The file's values by parameter name, each checked against its option's type."""
    options = options_by_key(ctx.command)
    defaults: dict[str, Any] = {}
    for key, value in read_mapping(path).items():
        param = options.get(option_key(str(key)))
        if param is None:
            close = get_close_matches(option_key(str(key)), options, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; the options are: {', '.join(sorted(options))}"
            fail(f"--config {path}: {key!r} is not an option of `layercut {ctx.info_name}`{hint}")
        value = file_value(value)
        try:
            check_value(ctx, param, value)
        except typer.BadParameter as exc:
            fail(f"--config {path}: {key}: {exc.message}")
        except (TypeError, ValueError):
            fail(f"--config {path}: {key}: {value!r} is not a value this option takes")
        defaults[param.name] = value
    return defaults


def load_config_file(ctx: typer.Context, path: Path | None) -> Path | None:
    """Eager callback of --config: the file's values become the command's defaults (the command line still wins)."""
    if path is not None and not ctx.resilient_parsing:
        ctx.default_map = {**(ctx.default_map or {}), **defaults_from_file(ctx, path)}
    return path


CONFIG = typer.Option(
    None,
    "--config",
    help="a YAML (.yaml, .yml) or TOML (.toml) file of this command's options: a flat mapping of option names, "
    "with - or _ (image-size: 32 or image_size = 32), to values; options given on the command line override it",
    is_eager=True,
    callback=load_config_file,
    dir_okay=False,
)
