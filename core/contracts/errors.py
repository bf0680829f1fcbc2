"""Errors a user can act on, and the signal a cancelled stage raises."""


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


class Cancelled(Exception):
    """Raised inside a stage when its cancellation check says the job was cancelled."""
