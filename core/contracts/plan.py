"""The pipeline's plan, written once: which stages run, in which order, and which earlier step feeds each input.

``layercut run`` and ``layercut.run`` execute it in this process; the API turns it into linked jobs when a
pipeline is created, and the job engine advances those jobs in its order. Both read the same steps::

    train → analyze → truncate → retrain → compare → explain      (a cut at the knee or a named cut point)
    train → analyze → select → compare → explain                  (the auto cut: select retrains candidates)
    … → compare → export → explain                                 (export: the slim model as a deployable file)
    … → explain → mlflow                                            (the service logs the run to MLflow)

- A pipeline that starts from a model (``model_id`` in the service) has no train step: every input that would
  come from ``train`` comes from ``GIVEN``, the model it was given.
- ``stop_after="analyze"`` ends after the analysis, ``"compare"`` leaves out the explanations.
- A cut at the knee reads the analysis (``truncate``'s ``analysis`` input); a cut the user names does not.
- The auto cut (the default) is one ``select`` step that reads the analysis (its depth probes and knee), cuts
  and retrains candidates until the smallest one within the accuracy budget is certain, and makes the slim model.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

from layercut.contracts.kinds import StageKind

GIVEN = "given"
"""The source of an input that is the model the pipeline was started from (instead of a train step)."""

CutRule = Literal["auto", "knee", "user"]
"""How a pipeline chooses its cut: the accuracy budget, the SSIM curve's knee, or a cut point the user names."""

InputRole = Literal["model", "analysis", "base", "slim", "compare_with"]
"""What an input is to its step: the model it works on, the analysis to cut at, the two models compared,
the second model explained beside the first."""

StopAfter = Literal["analyze", "compare", "explain"]
"""The last step of a pipeline: the analysis, the comparison, or the explanations (every step)."""


class PlanStep(BaseModel):
    """One stage of a pipeline and, per input, the kind of the earlier step that produces it (or ``GIVEN``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: StageKind
    inputs: dict[InputRole, str] = {}

    def source(self, role: InputRole) -> str | None:
        """The step (kind, or ``GIVEN``) that feeds ``role``; None when this step has no such input."""
        return self.inputs.get(role)


class PipelinePlan(BaseModel):
    """The steps of one pipeline in the order they run; each step waits for the one before it."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    steps: tuple[PlanStep, ...]

    @model_validator(mode="after")
    def _inputs_come_from_earlier_steps(self) -> PipelinePlan:
        seen: set[str] = {GIVEN}
        for step in self.steps:
            late = {source for source in step.inputs.values() if source not in seen}
            if late:
                raise ValueError(f"step {step.kind} reads {sorted(late)} before it has run")
            if step.kind in seen:
                raise ValueError(f"step {step.kind} appears twice")
            seen.add(step.kind)
        return self

    @property
    def kinds(self) -> tuple[StageKind, ...]:
        return tuple(step.kind for step in self.steps)

    def step(self, kind: StageKind) -> PlanStep | None:
        """The step of ``kind``, or None when this pipeline does not run it."""
        return next((step for step in self.steps if step.kind == kind), None)


def cut_rule(cut: str) -> CutRule:
    """The rule a pipeline's ``cut`` setting names: ``auto``, ``knee``, or else a cut point the user names."""
    return "auto" if cut == "auto" else "knee" if cut == "knee" else "user"


def pipeline_plan(
    *,
    train: bool = True,
    stop_after: StopAfter = "explain",
    cut: CutRule = "auto",
    sweep: bool = False,
    export: bool = False,
    mlflow: bool = False,
) -> PipelinePlan:
    """The slimming pipeline: train (unless started from a given model), analyze, then — unless it stops after
        the analysis — make the slim model (select under the auto cut, else truncate and retrain), compare it with the
        base and explain both side by side. ``sweep`` adds a sweep of the base model right after the analysis (a
    ``sweep_plan`` step, which fans out to one ``sweep_cut`` job per cut point and a ``sweep`` job that gathers them;
    the next step of the plan starts beside them). ``export`` adds, after the comparison, the export of the slim model
    as a deployable file. ``mlflow`` ends a whole run (up to explain) with a step that logs it to MLflow (the
    service's; ``layercut run`` logs in its own process)."""
    base = "train" if train else GIVEN
    steps: list[PlanStep] = [PlanStep(kind="train")] if train else []
    steps.append(PlanStep(kind="analyze", inputs={"model": base}))
    if sweep:
        steps.append(PlanStep(kind="sweep_plan", inputs={"model": base, "analysis": "analyze"}))
    if stop_after != "analyze":
        if cut == "auto":
            steps.append(PlanStep(kind="select", inputs={"model": base, "analysis": "analyze"}))
            slim = "select"
        else:
            truncate_inputs: dict[InputRole, str] = {"model": base}
            if cut == "knee":
                truncate_inputs["analysis"] = "analyze"
            steps += [
                PlanStep(kind="truncate", inputs=truncate_inputs),
                PlanStep(kind="retrain", inputs={"model": "truncate"}),
            ]
            slim = "retrain"
        steps.append(PlanStep(kind="compare", inputs={"base": base, "slim": slim}))
        if export:
            steps.append(PlanStep(kind="export", inputs={"model": slim}))
        if stop_after == "explain":
            steps.append(PlanStep(kind="explain", inputs={"model": base, "compare_with": slim}))
    if mlflow:
        if stop_after != "explain":
            raise ValueError("logging to MLflow needs the whole run: every step up to explain")
        steps.append(PlanStep(kind="mlflow", inputs={"base": base, "slim": slim}))
    return PipelinePlan(steps=tuple(steps))
