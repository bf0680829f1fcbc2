"""Errors a user can act on, the signal a cancelled stage raises, and how a validation error reads in one line."""

from __future__ import annotations

import errno
import os

from pydantic import ValidationError


class LayercutError(Exception):
    """A problem with the user's input or environment; the message says what to fix.

    The command line prints it without a traceback; the service stores it on the job.
    """

    code = "invalid_input"


class DataError(LayercutError):
    """The dataset cannot be used as given (empty class, unreadable file, mixed sizes …)."""

    code = "bad_data"


class MissingResourceError(LayercutError):
    """Something that must be present locally is not (pretrained weights, a named dataset)."""

    code = "missing_resource"


class StorageFull(LayercutError):
    """The artifact volume is full (``ENOSPC``) or its disk quota is spent (``EDQUOT``): nothing the caller sent is
    wrong; space must be freed. The API answers it with 507, a job ends ``failed`` with this code."""

    code = "storage_full"

    def __init__(self, message: str = "storage_full: the artifact volume is full; free space or raise the quota"):
        super().__init__(message)


DISK_FULL_ERRNOS = frozenset(n for n in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if n is not None)
"""The errors of a write that found no room: the volume is full, or the user's disk quota is."""


def disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an error it was raised from or while handling, is a write that found the disk full."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, StorageFull) or (isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS):
            return True
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return False


class Cancelled(Exception):
    """Raised inside a stage when its cancellation check says the job was cancelled."""


def without_root(text: str, root: str | os.PathLike[str], name: str = "the artifact root") -> str:
    """``text`` with the server folder ``root`` taken out: a path under it becomes relative to it (as a job's result
    names its files), ``root`` itself becomes ``name``. For messages a caller of the service reads."""
    base = os.fspath(root).rstrip(os.sep)
    if not base:
        return text
    return text.replace(base + os.sep, "").replace(base, name)


def first_error(exc: ValidationError) -> str:
    """The first error of a validation, where and what: "knee.found: Field required (and 2 more problems)"."""
    errors = exc.errors(include_url=False)
    if not errors:
        return str(exc)
    error = errors[0]
    where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"]).lstrip(".")
    text = f"{where}: {error['msg']}" if where else error["msg"]
    value = error.get("input")
    if error["type"] != "missing" and (value is None or isinstance(value, (str, int, float, bool))):
        shown = repr(value)
        text += f" (it is {shown})" if len(shown) <= 60 else ""
    more = len(errors) - 1
    return text + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")
