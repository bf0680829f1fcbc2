"""run.json, built once from the typed results of a run's stages: ``layercut run`` writes it at the end of its
run, and the service's ``mlflow`` step builds the same summary from the results of its pipeline's jobs."""

from __future__ import annotations

from layercut.contracts import files
from layercut.contracts.configs import SelectConfig
from layercut.contracts.files import RUN_FOLDERS
from layercut.contracts.results import (
    AnalyzeResult,
    CompareResult,
    ExplainBrief,
    ExplainResult,
    ModelBrief,
    OtherRules,
    ProfiledModel,
    RetrainResult,
    RunCutPoint,
    RunData,
    RunOutputs,
    RunSelection,
    RunSummary,
    SelectResult,
    SweepResult,
    TrainResult,
    TruncateResult,
)
from layercut.stages.select import other_rules


def run_summary(
    *,
    data: RunData,
    architecture: str,
    trained: TrainResult | None,
    analysis: AnalyzeResult,
    cut: SelectResult | TruncateResult,
    retrained: RetrainResult,
    compared: CompareResult,
    explained: ExplainResult,
    budget: SelectConfig,
    outputs: RunOutputs,
    swept: SweepResult | None = None,
) -> RunSummary:
    """run.json: the data, both models in brief, the cut and why (``cut``: the auto rule's search, or the
    truncation of the knee or a named cut point), the comparison, the explanations, the files. ``trained`` is None
    for a run that started from a model trained elsewhere."""
    selection: RunSelection | None = None
    if isinstance(cut, SelectResult):
        rules, chosen_by = cut.rules, "auto"
        selection = RunSelection(
            file=f"{RUN_FOLDERS['select']}/{files.SELECT_JSON}",
            within_budget=cut.within_budget,
            shortfall=cut.shortfall,
            verdict=cut.verdict,
            budget=cut.budget,
            candidates=cut.candidates,
        )
    else:
        chosen_by = cut.chosen_by
        rules = rules_without_search(analysis, budget)
    if swept is not None and rules.auto is None:
        rules = rules.model_copy(update={"auto": swept.smallest_within_budget})
    point = compared.slim.cut_point
    assert point is not None  # the compared slim model was cut
    return RunSummary(
        data=data,
        architecture=architecture,
        base=model_brief(trained, compared.base),
        slim=model_brief(retrained, compared.slim),
        cut_point=RunCutPoint(index=point.index, name=point.name, chosen_by=chosen_by, of=cut.cut_points_total),
        knee_found=analysis.knee_found,
        knee=analysis.knee,
        rules=rules,
        selection=selection,
        verdict=run_verdict(compared, chosen_by, selection),
        comparison=compared.comparison,
        explain=explain_brief(explained, RUN_FOLDERS["explain"]),
        outputs=outputs,
    )


def rules_without_search(analysis: AnalyzeResult, budget: SelectConfig) -> OtherRules:
    """What the knee and the probes choose when the auto rule did not run (its choice is then unknown)."""
    base_accuracy = analysis.depth_probes.base_val_accuracy if analysis.depth_probes is not None else 1.0
    return other_rules(analysis, budget.threshold(base_accuracy), None)


def run_verdict(compared: CompareResult, chosen_by: str, selection: RunSelection | None) -> str:
    """The run's outcome in one sentence, on the test split: how much accuracy the slim model kept, and at what size."""
    accuracy = compared.comparison.metrics.accuracy
    params = compared.comparison.metrics.params
    drop = (accuracy.base - accuracy.slim) * 100
    size = f"{params.slim:,} of {params.base:,} parameters ({params.slim / max(params.base, 1):.0%})"
    tested = f"test accuracy {accuracy.slim:.1%} against the base model's {accuracy.base:.1%}"
    if selection is not None:
        return f"{selection.verdict} On the test split: {tested}, with {size}."
    change = f"{drop:.1f} points lower" if drop > 0 else "no lower"
    return (
        f"Cut by the {chosen_by} rule, with no accuracy budget checked: {tested} ({change}), with {size}. "
        "Use --cut auto to keep the accuracy within a budget."
    )


def model_brief(trained: TrainResult | RetrainResult | None, profiled: ProfiledModel) -> ModelBrief:
    """One model of the run in brief: the numbers compare measured, the epochs its training ran (none for a model
    trained elsewhere)."""
    return ModelBrief(
        accuracy=profiled.accuracy,
        macro_f1=profiled.macro_f1,
        params=profiled.params,
        macs=profiled.macs,
        checkpoint_bytes=profiled.checkpoint_bytes,
        latency_ms={label: measured.median_ms for label, measured in profiled.latency.items()},
        best_epoch=trained.best_epoch if trained is not None else None,
        epochs_run=trained.epochs_run if trained is not None else None,
    )


def explain_brief(explanation: ExplainResult, folder: str) -> ExplainBrief:
    """The explain stage in brief; figure paths are relative to the run folder (as run.json's own)."""
    models = explanation.models
    return ExplainBrief(
        file=f"{folder}/{files.EXPLAIN_JSON}",
        methods=explanation.methods,
        target=explanation.target,
        images=len(explanation.images),
        layers={key: model.layer for key, model in models.items()},
        accuracy_on_these_images={key: model.accuracy_on_these_images for key, model in models.items()},
        agreement=explanation.agreement,
        figures={name: f"{folder}/{file}" for name, file in explanation.figures.items()},
    )
