"""A section whose stage is not done: not run yet, queued, running, failed, cancelled, or its outputs missing."""

from __future__ import annotations

from typing import Any

from markupsafe import Markup

from layercut.report.reading import is_number
from layercut.report.stages import KEY_FILES, Stage
from layercut.report.templating import render_template


def context(stage: Stage) -> dict[str, Any]:
    """What to say about the stage (``message``) and in which tone (``tone``: pending, error or warn)."""
    s = stage.input
    what = f"the {s.kind} step"
    if s.status is None:
        message = (
            f"Not run yet: {stage.expected_output} is not there "
            "(the run is still going, or it stopped before this stage)."
        )
        return {"message": message, "tone": "pending"}
    if s.status == "queued":
        after = " (it starts when the step before it succeeds)." if s.step else "."
        return {"message": f"Not run yet: {what} is queued{after}", "tone": "pending"}
    if s.status in ("running", "cancelling"):
        detail = [f"{s.percent:.0f}%"] if is_number(s.percent) else []
        detail += [str(x) for x in (s.stage, s.message) if x]
        verb = "is running" if s.status == "running" else "is being cancelled"
        progress = f" ({' · '.join(detail)})." if detail else "."
        return {"message": f"Not run yet: {what} {verb}{progress}", "tone": "pending"}
    if s.status == "failed":
        reason = ": ".join(str(x) for x in (s.error_code, s.error_message) if x) or "no error recorded"
        return {"message": f"{what.capitalize()} failed — {reason}", "tone": "error"}
    if s.status == "cancelled":
        return {"message": f"Not run: {what} was cancelled.", "tone": "pending"}
    if s.status == "succeeded":
        message = (
            f"{what.capitalize()} succeeded, but its outputs ({KEY_FILES.get(s.kind, 'files')}) are missing "
            "from the artifact volume."
        )
        return {"message": message, "tone": "warn"}
    return {"message": f"Not run yet: {what} is {s.status}.", "tone": "pending"}


def render(stage: Stage) -> Markup:
    return render_template("pending.html", **context(stage))
