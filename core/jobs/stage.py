"""Running a job's stage: dispatch on the params' kind to the stage function, with the job's inputs resolved.

The one module of the job engine that imports ``layercut.stages``, and only inside functions: importing the
engine (as the API and the worker do) must not import torch; the stages load when a job runs.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from layercut.contracts.configs import DataConfig, MlflowConfig
from layercut.contracts.errors import LayercutError, MissingResourceError
from layercut.contracts.files import (
    ANALYSIS_JSON,
    CHECKPOINT,
    COMPARE_JSON,
    EXPLAIN_JSON,
    IMPORT_JSON,
    METRICS_JSON,
    MLFLOW_FOLDER,
    MLFLOW_JSON,
    REPORT_HTML,
    RUN_FOLDERS,
    RUN_JSON,
    TRUNCATE_JSON,
    import_upload,
)
from layercut.contracts.jobs import (
    AnalyzeParams,
    CompareParams,
    ExplainParams,
    ExportParams,
    ImportParams,
    JobParams,
    MlflowParams,
    ModelRef,
    RetrainParams,
    SelectParams,
    SweepCutParams,
    SweepParams,
    SweepPlanParams,
    TrainParams,
    TruncateParams,
)
from layercut.contracts.kinds import StageKind
from layercut.contracts.results import (
    RESULT_MODELS,
    AnalyzeResult,
    CompareResult,
    ExplainResult,
    RetrainResult,
    RunData,
    RunOutputs,
    SelectResult,
    StageResult,
    SweepCutResult,
    SweepPlanResult,
    TrainResult,
    TruncateResult,
)
from layercut.jobs.fanout import add_fan_out, child_id
from layercut.jobs.outputs import ProducedModel
from layercut.jobs.progress import JobProgress
from layercut.jobs.resolve import Resolver
from layercut.settings import Settings
from layercut.store.models import Job, ModelVersion, utcnow

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
    worker_budget = run.settings.analyze_memory_budget_mb
    budget = min(params.analyze.memory_budget_mb or worker_budget, worker_budget)
    config = params.analyze.model_copy(update={"memory_budget_mb": budget})
    return StageOutcome(analyze_stage(run.resolver.checkpoint(model), dataset, config, run.out, reporter=run.working))


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


def select_metrics(result: SelectResult) -> dict[str, Any]:
    """The metrics of the auto cut's chosen slim model kept on the model version it made."""
    chosen = result.chosen
    return {
        "accuracy": chosen.accuracy,
        "macro_f1": chosen.macro_f1,
        "val_accuracy": chosen.val_accuracy,
        "within_budget": result.within_budget,
        "shortfall": result.shortfall,
        "candidates": len(result.candidates),
        "params_kept": result.params_kept,
    }


def run_select(params: SelectParams, run: StageRun) -> StageOutcome:
    """The auto cut: the smallest slim model within the accuracy budget, retrained; the model version it makes
    descends from the base model."""
    from layercut.stages.select import select_stage

    model = run.resolver.model(params.model)
    analysis = run.resolver.analysis_path(params)
    assert analysis is not None  # a select job always has an analysis (analysis_path raises otherwise)
    dataset = run.data_for(params.dataset_id, model)
    result = select_stage(
        run.resolver.checkpoint(model),
        dataset,
        analysis,
        params.select,
        params.train,
        run.out,
        params.dropout,
        params.from_scratch,
        run.working,
    )
    dataset_id = params.dataset_id or model.dataset_id
    produced = run.produced(True, dataset_id, model.id, result.slim_params, select_metrics(result))
    return StageOutcome(result, produced)


def run_sweep_plan(params: SweepPlanParams, run: StageRun) -> StageOutcome:
    """Resolve a sweep's cut points and measure the base model, then fan out: one sweep_cut job per cut point and
    the sweep job that gathers them, added to this job's pipeline (``layercut.jobs.fanout``)."""
    from layercut.stages.devices import resolve_device
    from layercut.stages.select import plan_sweep

    if run.resolver.job.pipeline_id is None:
        raise LayercutError("a sweep fans out inside a pipeline: start it with POST /v1/pipelines and `sweep`")
    model = run.resolver.model(params.model)
    dataset = run.data_for(params.dataset_id, model)
    analysis = run.resolver.analysis_path(params)
    plan = plan_sweep(
        run.resolver.checkpoint(model),
        dataset,
        params.sweep,
        analysis,
        resolve_device(params.train.device),
        run.working,
    )
    parent = run.resolver.job.id
    base = ModelRef(model_id=model.id)
    branches: list[tuple[uuid.UUID, JobParams]] = [
        (
            child_id(parent, f"cut-{ref.index}"),
            SweepCutParams(
                model=base,
                cut=ref.index,
                dataset_id=params.dataset_id,
                threshold=plan.budget.threshold,
                probe_accuracy=plan.probe.get(ref.index),
                dropout=params.sweep.dropout,
                from_scratch=params.from_scratch,
                train=params.train,
            ),
        )
        for ref in plan.cut_points
    ]
    gather_id = child_id(parent, "gather")
    gather = SweepParams(plan_job=parent, cut_jobs=[job_id for job_id, _ in branches])
    add_fan_out(run.resolver.session, run.resolver.job, branches, (gather_id, gather))
    run.reporter.update("sweep", 1.0, f"{len(branches)} cut points sent to the workers")
    return StageOutcome(
        SweepPlanResult(
            stage="sweep_plan",
            cut_points=plan.cut_points,
            cut_jobs=[str(job_id) for job_id, _ in branches],
            gather_job=str(gather_id),
            base=plan.base,
            budget=plan.budget,
        )
    )


def run_sweep_cut(params: SweepCutParams, run: StageRun) -> StageOutcome:
    """One cut point of a sweep, cut and retrained; its model version descends from the base model."""
    from layercut.stages.select import sweep_cut_stage

    model = run.resolver.model(params.model)
    dataset = run.data_for(params.dataset_id, model)
    result = sweep_cut_stage(
        run.resolver.checkpoint(model),
        dataset,
        params.cut,
        params.threshold,
        params.probe_accuracy,
        params.train,
        run.out,
        params.dropout,
        params.from_scratch,
        run.working,
    )
    candidate = result.candidate
    metrics = {"accuracy": candidate.accuracy, "macro_f1": candidate.macro_f1, "val_accuracy": candidate.val_accuracy}
    dataset_id = params.dataset_id or model.dataset_id
    return StageOutcome(result, run.produced(True, dataset_id, model.id, candidate.params, metrics))


def run_sweep(params: SweepParams, run: StageRun) -> StageOutcome:
    """Gather a sweep's retrained cut points into sweep.json and its trade-off chart."""
    from layercut.stages.select import SweepPlan, gather_sweep

    plan_job = run.resolver.producing_job(params.plan_job, "sweep plan")
    planned = SweepPlanResult.model_validate(stored_result(plan_job))
    plan_params = SweepPlanParams.model_validate(plan_job.params)
    swept = [
        SweepCutResult.model_validate(stored_result(run.resolver.producing_job(job_id, "sweep cut"))).candidate
        for job_id in params.cut_jobs
    ]
    model = run.resolver.model(plan_params.model)
    analysis = run.resolver.analysis_path(plan_params)
    plan = SweepPlan(
        cut_points=planned.cut_points,
        base=planned.base,
        budget=planned.budget,
        probe={c.cut_point.index: c.probe_accuracy for c in swept if c.probe_accuracy is not None},
    )
    started = plan_job.started_at or run.resolver.job.started_at
    seconds = (utcnow() - started).total_seconds() if started is not None else 0.0
    result = gather_sweep(
        run.resolver.checkpoint(model),
        str(model.architecture),
        plan,
        swept,
        analysis,
        plan_params.sweep,
        plan_params.train,
        run.out,
        seconds,
    )
    run.reporter.update("sweep", 1.0, f"{len(swept)} cut points gathered")
    return StageOutcome(result)


def stored_result(job: Job) -> dict[str, Any]:
    """A finished job's result as stored, without what the job engine adds to it (the model id)."""
    return {key: value for key, value in (job.result or {}).items() if key != "model_id"}


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


def run_import(params: ImportParams, run: StageRun) -> StageOutcome:
    """Check the uploaded weights against the spec's architecture and write them as a checkpoint; the upload is
    removed however the job ends (a failed import names the mismatched keys, and is submitted again)."""
    from layercut.stages.importing import import_weights
    from layercut.stages.stages import write_result

    job, store = run.resolver.job, run.resolver.store
    key = import_upload(job.tenant, job.id, params.weights_suffix)
    try:
        try:
            upload = store.local(key, size=params.weights_bytes, sha256=params.weights_sha256)
        except MissingResourceError:
            raise LayercutError(
                f"the uploaded weights ({params.weights_name}) are no longer stored; import the model again"
            ) from None
        result = import_weights(upload, params.spec, run.out / CHECKPOINT, reporter=run.reporter)
    finally:
        store.delete_tree(key.rsplit("/", 1)[0])
    write_result(run.out / IMPORT_JSON, result)
    metrics = {"source_format": result.source_format, "weights_name": params.weights_name}
    produced = run.produced(True, params.dataset_id, None, result.params, metrics)
    return StageOutcome(result, produced)


def run_export(params: ExportParams, run: StageRun) -> StageOutcome:
    """Write the model as a deployable file (with export.json) into the job's folder, so both are its artifacts."""
    from layercut.contracts.configs import EXPORT_SUFFIXES
    from layercut.stages.export import export_stage

    model = run.resolver.model(params.model)
    dataset = run.data_for(params.dataset_id, model) if (params.dataset_id or model.dataset_id) else None
    out = run.out / f"model{EXPORT_SUFFIXES[params.export.format]}"
    result = export_stage(run.resolver.checkpoint(model), out, params.export, dataset, reporter=run.working)
    return StageOutcome(result)


MLFLOW_KEPT = (RUN_JSON, REPORT_HTML, f"{MLFLOW_FOLDER}/{MLFLOW_JSON}")
"""What of the run folder an mlflow job assembles it keeps as its own artifacts (the rest is its steps' files)."""


def run_mlflow(params: MlflowParams, run: StageRun) -> StageOutcome:
    """Log the pipeline's run to the service's MLflow tracking server, as ``layercut run --mlflow`` logs its own: the
    steps' files are gathered into a run folder of the same layout, its run.json and report are written, and the
    same publishing registers base and slim. The job keeps run.json, the report and mlflow.json."""
    from layercut.report import write_run_report
    from layercut.stages.run_summary import run_summary
    from layercut.stages.stages import write_result
    from layercut.stages.tracking import LOGGED_SUFFIXES, check_tracking, publish_run

    uri = run.settings.mlflow_tracking_uri
    if uri is None:
        raise LayercutError(
            "this service logs to no MLflow tracking server (its operator sets LAYERCUT_MLFLOW_TRACKING_URI)"
        )
    config = MlflowConfig(tracking_uri=uri, **params.mlflow.model_dump())
    check_tracking(config)
    jobs = {
        kind: run.resolver.producing_job(job_id, f"pipeline's {kind} step") for kind, job_id in params.steps.items()
    }
    results = {kind: RESULT_MODELS[kind].model_validate(stored_result(job)) for kind, job in jobs.items()}
    trained = typed(results["train"], TrainResult) if "train" in results else None
    cut = results.get("select") or results["truncate"]
    assert isinstance(cut, (SelectResult, TruncateResult))
    base_model = run.resolver.model(params.base)
    pipeline = run.resolver.job.pipeline_id
    with tempfile.TemporaryDirectory(prefix="layercut-mlflow-") as staging:
        folder = Path(staging) / f"pipeline-{pipeline}"
        run.reporter.update("mlflow", 0.0, "gathering the pipeline's files")
        for kind, job in jobs.items():
            copy_files(run.resolver.job_files(job, suffixes=LOGGED_SUFFIXES), folder / RUN_FOLDERS[kind])
        copy_files({CHECKPOINT: run.resolver.checkpoint(base_model)}, folder / RUN_FOLDERS["train"])
        if isinstance(cut, SelectResult):  # the chosen candidate's folder is the run's slim model
            under = cut.chosen.folder.removeprefix(f"{jobs['select'].tenant}/{jobs['select'].id}/")
            copy_files(run.resolver.job_files(jobs["select"], under), folder / RUN_FOLDERS["retrain"])
        else:
            copy_files(run.resolver.job_files(jobs["retrain"], suffixes=(CHECKPOINT,)), folder / RUN_FOLDERS["retrain"])
        retrained = RetrainResult.model_validate_json((folder / RUN_FOLDERS["retrain"] / METRICS_JSON).read_bytes())
        dataset = run.data_for(params.dataset_id, base_model)
        dataset_id = params.dataset_id or base_model.dataset_id
        summary = run_summary(
            data=RunData(
                source=run.resolver.dataset(dataset_id).name if dataset_id else "",
                classes=list(retrained.classes),
                image_size=retrained.data.image_size,
                splits=retrained.data.sizes,
            ),
            architecture=str(base_model.architecture),
            trained=trained,
            analysis=typed(results["analyze"], AnalyzeResult),
            cut=cut,
            retrained=retrained,
            compared=typed(results["compare"], CompareResult),
            explained=typed(results["explain"], ExplainResult),
            budget=params.select,
            outputs=RunOutputs(
                base_checkpoint=f"{RUN_FOLDERS['train']}/{CHECKPOINT}",
                slim_checkpoint=f"{RUN_FOLDERS['retrain']}/{CHECKPOINT}",
                analysis=f"{RUN_FOLDERS['analyze']}/{ANALYSIS_JSON}",
                compare=f"{RUN_FOLDERS['compare']}/{COMPARE_JSON}",
                explain=f"{RUN_FOLDERS['explain']}/{EXPLAIN_JSON}",
                report=REPORT_HTML,
                export=None,
            ),
        )
        write_result(folder / RUN_JSON, summary)
        write_run_report(folder, shown_as=f"pipeline {pipeline}")
        result = publish_run(folder, config, dataset, run.reporter.scaled(0.1, 1.0), run_name=f"pipeline-{pipeline}")
        write_run_report(folder, shown_as=f"pipeline {pipeline}")  # the kept copy also says where the run was logged
        copy_files({name: folder / name for name in MLFLOW_KEPT}, run.out)
    return StageOutcome(result)


def copy_files(found: dict[str, Path], into: Path) -> None:
    """Copy (or hard-link) each file to ``into/<its relative path>``."""
    from layercut.stages.select import link_or_copy

    for relative, source in found.items():
        target = into / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        link_or_copy(source, target)


ResultT = TypeVar("ResultT", bound=BaseModel)


def typed(result: BaseModel, model: type[ResultT]) -> ResultT:
    """``result`` as the model it must be (a job's stored result, validated by its kind)."""
    if not isinstance(result, model):
        raise TypeError(f"expected a {model.__name__}, got a {type(result).__name__}")
    return result


STAGE_RUNNERS: dict[StageKind, Callable[[Any, StageRun], StageOutcome]] = {
    "train": run_train,
    "analyze": run_analyze,
    "truncate": run_truncate,
    "retrain": run_retrain,
    "select": run_select,
    "sweep_plan": run_sweep_plan,
    "sweep_cut": run_sweep_cut,
    "sweep": run_sweep,
    "compare": run_compare,
    "explain": run_explain,
    "import": run_import,
    "export": run_export,
    "mlflow": run_mlflow,
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


def gpu_peak_bytes() -> int | None:
    """The GPU memory peak of the job that just ran in this process (CUDA's max_memory_allocated, reset for the
    next), or None when torch was not loaded or has no GPU."""
    import sys

    torch = sys.modules.get("torch")  # never import torch just to ask
    if torch is None or not torch.cuda.is_available():
        return None
    peak = int(torch.cuda.max_memory_allocated())
    torch.cuda.reset_peak_memory_stats()
    return peak
