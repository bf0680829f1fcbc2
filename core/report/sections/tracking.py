"""Where the run was logged to MLflow: the experiment and run, and the model versions registered (base and slim,
as ONNX), with how far each ONNX file's logits are from torch's.

The tracking server's address is shown as text, not as a link: the page makes no external references.
"""

from __future__ import annotations

from typing import Any

from markupsafe import Markup

from layercut.contracts.results import MlflowResult
from layercut.report.formats import human, integer
from layercut.report.stages import Stage
from layercut.report.templating import render_template


def context(stage: Stage) -> dict[str, Any]:
    """The run's place in MLflow and one row per registered model version, base first."""
    logged = stage.read(MlflowResult)
    versions = sorted(logged.models or [], key=lambda model: model.role != "base")
    return {
        "tracking_uri": logged.tracking_uri,
        "experiment": f"{logged.experiment} (id {logged.experiment_id})" if logged.experiment else None,
        "run_id": logged.run_id,
        "registered_model": logged.registered_model,
        "artifacts": integer(logged.artifacts) if logged.artifacts is not None else None,
        "rows": [
            (
                model.role,
                model.version,
                model.model_uri,
                human(model.onnx_bytes, "B"),
                f"{model.parity_max_abs_diff:.2g}" if model.parity_max_abs_diff is not None else "—",
            )
            for model in versions
        ],
    }


def render(stage: Stage) -> Markup:
    return render_template("tracking.html", **context(stage))
