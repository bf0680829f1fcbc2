"""``layercut``: run the slimming pipeline, or any one stage, from the command line.

This module is the app: it gathers the commands of the other modules (``run``, ``stages``, ``inspection``,
``service``, ``keys``) and turns errors into one message and a non-zero exit status; set LAYERCUT_DEBUG=1 to
see the traceback too.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import typer
from pydantic import ValidationError

from layercut import __version__
from layercut.cli.export import export
from layercut.cli.importing import import_command
from layercut.cli.inspection import curve, knee, layers
from layercut.cli.keys import keys_app
from layercut.cli.options import option_for
from layercut.cli.output import err_console, print_error
from layercut.cli.run import run
from layercut.cli.service import migrate, serve
from layercut.cli.stages import analyze, compare, explain, retrain, select, sweep, train, truncate
from layercut.contracts.errors import Cancelled, LayercutError
from layercut.settings import Settings

app = typer.Typer(
    name="layercut",
    help="Find where a trained CNN stops learning new features (guided backprop + SSIM + knee), "
    "cut it there, retrain the slim model and compare it with the original.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

COMMANDS: tuple[tuple[str, Callable[..., Any]], ...] = (
    ("run", run),
    ("train", train),
    ("analyze", analyze),
    ("truncate", truncate),
    ("retrain", retrain),
    ("select", select),
    ("sweep", sweep),
    ("compare", compare),
    ("explain", explain),
    ("export", export),
    ("import", import_command),
    ("layers", layers),
    ("curve", curve),
    ("knee", knee),
    ("serve", serve),
    ("migrate", migrate),
)
"""The commands in the order ``layercut --help`` lists them (``keys`` is a group of its own, last)."""

for command_name, command in COMMANDS:
    app.command(name=command_name)(command)
app.add_typer(keys_app, name="keys")


def print_version(value: bool) -> None:
    """Eager callback of --version: print ``layercut <version>`` and stop."""
    if value:
        typer.echo(f"layercut {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", help="print the version and exit", is_eager=True, callback=print_version
    ),
) -> None:
    """The options before the command (only --version and --help)."""


def validation_problem(model_name: str, error: Any) -> str:
    """One problem of a config that did not validate, with the option (or LAYERCUT_ variable) it came from."""
    field = next((part for part in error["loc"] if isinstance(part, str)), None)
    if field is None:
        return str(error["msg"])
    where = f"LAYERCUT_{field.upper()}" if model_name == "Settings" else option_for(model_name, field)
    return f"{where}: {error['msg']}"


def validation_message(exc: ValidationError) -> str:
    """All the problems of a config that did not validate, on one line."""
    return "; ".join(validation_problem(exc.title, error) for error in exc.errors())


def debug_requested() -> bool:
    """LAYERCUT_DEBUG, read through the settings (unreadable settings count as no: their error is shown)."""
    try:
        return Settings().debug
    except ValidationError:
        return False


def main() -> None:
    """Entry point: run the app, turning user errors into one-line messages and exit status 2."""
    debug = debug_requested()
    try:
        app()
    except (LayercutError, ValidationError) as exc:
        if debug:
            raise
        print_error(validation_message(exc) if isinstance(exc, ValidationError) else str(exc))
        sys.exit(2)
    except Cancelled as exc:
        err_console.print(f"[bold yellow]cancelled:[/] {exc}")
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the command line never shows a raw traceback
        if debug:
            raise
        print_error(
            f"unexpected {type(exc).__name__}: {exc} (set LAYERCUT_DEBUG=1 to see the traceback and please report it)"
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
