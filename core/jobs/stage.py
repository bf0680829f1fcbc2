"""Running a job's stage: dispatch on the params' kind to the stage function, with the job's inputs resolved.

The one module of the job engine that imports ``layercut.stages``, and only inside functions: importing the
engine (as the API and the worker do) must not import torch; the stages load when a job runs.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from layercut.contracts.configs import DataConfig
from layercut.contracts.errors import LayercutError
from layercut.contracts.files import CHECKPOINT, TRUNCATE_JSON
from layercut.contracts.jobs import (
    AnalyzeParams,
    CompareParams,
    ExplainParams,
    JobParams,
    RetrainParams,
    TrainParams,
    TruncateParams,
)
from layercut.contracts.kinds import StageKind
from layercut.contracts.results import RetrainResult, StageResult, TrainResult, TruncateResult
from layercut.jobs.outputs import ProducedModel
from layercut.jobs.progress import JobProgress
from layercut.jobs.resolve import Resolver
from layercut.settings import Settings
from layercut.store.models import ModelVersion

if TYPE_CHECKING:
    from layercut.stages.data import Dataset
    from layercut.stages.progress import Reporter

LOADING_SHARE = 0.1
"""The part of a stage's progress bar that loading its data takes."""


@dataclass
class StageOutcome:
    """What a stage returned (its typed result, which becomes the job's result) and the model it made, if any."""

    result: StageResult
    produced: ProducedModel | None = None


@dataclass
class StageRun:
    """One stage run of a job: its resolved inputs, its output folder, its progress and where datasets live."""

    resolver: Resolver
    out: Path
    reporter: Reporter
    settings: Settings

    @property
    def working(self) -> Reporter:
        """The reporter of the stage's own work, after its data is loaded."""
        return self.reporter.scaled(LOADING_SHARE, 1.0)

    def load(self, config: DataConfig) -> Dataset:
        """Decode the dataset ``config`` names: the one place the job engine reads data."""
        from layercut.stages.stages import load_data

        return load_data(
            config,
            self.reporter.scaled(0.0, LOADING_SHARE),
            data_root=self.settings.resolved_data_root,
            allow_download=not self.settings.no_download,
        )

    def data_for(self, dataset_id: uuid.UUID | None, model: ModelVersion) -> Dataset:
        """The data to use with an existing model: its training split settings, on ``dataset_id`` (default: its own)."""
        from layercut.stages.checkpoint import read_spec

        spec = read_spec(self.resolver.checkpoint(model))
        return self.load(self.resolver.data_config(dataset_id, model, spec))

    def produced(
        self,
        trained: bool,
        dataset_id: uuid.UUID | None,
        parent_id: uuid.UUID | None,
        params: int,
        metrics: dict[str, Any],
    ) -> ProducedModel:
        """The checkpoint the stage wrote into its folder, with the spec read from its header."""
        from layercut.stages.checkpoint import read_spec

        path = self.out / CHECKPOINT
        return ProducedModel(path, read_spec(path), trained, dataset_id, parent_id, params, metrics)


def model_metrics(result: TrainResult | RetrainResult) -> dict[str, Any]:
    """The metrics of a training result kept on the model version it made."""
    return {
        "accuracy": result.accuracy,
        "macro_f1": result.macro_f1,
        "best_epoch": result.best_epoch,
        "best_val_accuracy": result.best_val_accuracy,
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
    }


def truncate_metrics(result: TruncateResult) -> dict[str, Any]:
    """The metrics of a truncation kept on the (untrained) slim model version it made."""
    return {"base_params": result.base_params, "slim_params": result.slim_params, "params_kept": result.params_kept}


def run_train(params: TrainParams, run: StageRun) -> StageOutcome:
    """Train a base model on a registered dataset."""
    from layercut.stages.stages import train_stage

    dataset_row = run.resolver.dataset(params.data.dataset_id)
    data = DataConfig(source=run.resolver.source(dataset_row), **params.data.model_dump(exclude={"dataset_id"}))
    result = train_stage(
        run.load(data), data, params.arch, params.train, run.out, pretrained=params.pretrained, reporter=run.working
    )
    produced = run.produced(True, dataset_row.id, None, result.params, model_metrics(result))
    return StageOutcome(result, produced)


def run_analyze(params: AnalyzeParams, run: StageRun) -> StageOutcome:
    """GBP maps, SSIM matrix, curves and knee of a model."""
    from layercut.stages.stages import analyze_stage

    model = run.resolver.model(params.model)
    dataset = run.data_for(params.dataset_id, model)
    return StageOutcome(
        analyze_stage(run.resolver.checkpoint(model), dataset, params.analyze, run.out, reporter=run.working)
    )


def run_truncate(params: TruncateParams, run: StageRun) -> StageOutcome:
    """Cut a model at a cut point (the analysis's knee, or one the user named); the slim model is untrained."""
    from layercut.stages.stages import truncate_stage, write_result

    model = run.resolver.model(params.model)
    analysis = run.resolver.analysis_path(params)
    run.reporter.update("truncate", 0.0, "cutting the model")
    result = truncate_stage(run.resolver.checkpoint(model), params.truncate, run.out / CHECKPOINT, analysis)
    write_result(run.out / TRUNCATE_JSON, result)
    run.reporter.update("truncate", 1.0, f"cut at {result.cut_point.name}")
    produced = run.produced(False, model.dataset_id, model.id, result.slim_params, truncate_metrics(result))
    return StageOutcome(result, produced)


def run_retrain(params: RetrainParams, run: StageRun) -> StageOutcome:
    """Train a slim model; the model version it makes descends from the base model."""
    from layercut.stages.stages import retrain_stage

    model = run.resolver.model(params.model)
    dataset = run.data_for(params.dataset_id, model)
    result = retrain_stage(
        run.resolver.checkpoint(model),
        dataset,
        params.train,
        run.out,
        from_scratch=params.from_scratch,
        reporter=run.working,
    )
    dataset_id = params.dataset_id or model.dataset_id
    produced = run.produced(True, dataset_id, model.parent_id or model.id, result.params, model_metrics(result))
    return StageOutcome(result, produced)


def run_compare(params: CompareParams, run: StageRun) -> StageOutcome:
    """Compare a base and a slim model on the base model's data."""
    from layercut.stages.stages import compare_stage

    base, slim = run.resolver.model(params.base), run.resolver.model(params.slim)
    dataset = run.data_for(params.dataset_id, base)
    result = compare_stage(
        run.resolver.checkpoint(base),
        run.resolver.checkpoint(slim),
        dataset,
        params.compare,
        run.out,
        reporter=run.working,
    )
    return StageOutcome(result)


def run_explain(params: ExplainParams, run: StageRun) -> StageOutcome:
    """Explain a model's predictions, beside a second model's on the same images if one is given."""
    from layercut.stages.explain import explain_stage

    model = run.resolver.model(params.model)
    other = run.resolver.model(params.compare_with) if params.compare_with is not None else None
    dataset = run.data_for(params.dataset_id, model)
    result = explain_stage(
        run.resolver.checkpoint(model),
        dataset,
        params.explain,
        run.out,
        reporter=run.working,
        compare_checkpoint=run.resolver.checkpoint(other) if other is not None else None,
    )
    return StageOutcome(result)


STAGE_RUNNERS: dict[StageKind, Callable[[Any, StageRun], StageOutcome]] = {
    "train": run_train,
    "analyze": run_analyze,
    "truncate": run_truncate,
    "retrain": run_retrain,
    "compare": run_compare,
    "explain": run_explain,
}
"""How a job of each kind runs its stage."""


def run_stage(
    params: JobParams, resolver: Resolver, out: Path, settings: Settings, progress: JobProgress
) -> StageOutcome:
    """Run the stage of ``params.kind`` into ``out``, reporting to ``progress`` (every update is a cancellation
    point); returns its typed result and the model it made, if any."""
    from layercut.stages.progress import Reporter

    runner = STAGE_RUNNERS.get(params.kind)
    if runner is None:
        raise LayercutError(f"unknown job kind {params.kind!r}")
    reporter = Reporter(callback=progress.write, should_cancel=progress.should_cancel)
    return runner(params, StageRun(resolver, out, reporter, settings))
