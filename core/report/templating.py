"""The one Jinja environment of the report: templates from ``layercut.report/templates``, autoescaped.

Everything a template prints is escaped unless it is markup made by a template (a macro, a ``{% set %}`` block, a
rendered section); no Python code writes HTML. ``finalize`` prints None as nothing (a missing value leaves an
empty cell) and escapes text the way ``html.escape`` does (``&quot;``, ``&#x27;``), the spelling the page has
always used.
"""

from __future__ import annotations

import html
from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, Undefined
from markupsafe import Markup

from layercut.report.formats import FILTERS
from layercut.report.reading import is_number

__all__ = ["environment", "render_template"]


def escape_output(value: Any) -> Any:
    """What ``{{ value }}`` prints: markup as is, None (or undefined) as nothing, anything else escaped text."""
    if value is None or isinstance(value, Undefined):
        return ""
    if hasattr(value, "__html__"):
        return value
    return Markup(html.escape(str(value), quote=True))


def is_present(value: Any) -> bool:
    """The ``present`` test: a value worth a line of the page (not missing, not None, not empty text)."""
    return not isinstance(value, Undefined) and value is not None and value != ""


@cache
def environment() -> Environment:
    """The environment, built once: loader, autoescape, number filters and tests."""
    env = Environment(
        loader=PackageLoader("layercut.report", "templates"),
        autoescape=True,
        finalize=escape_output,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(FILTERS)
    env.tests["present"] = is_present
    env.tests["numeric"] = is_number
    return env


def render_template(name: str, **context: Any) -> Markup:
    """Render template ``name`` with ``context``: markup to place into another template."""
    return Markup(environment().get_template(name).render(**context))
