"""layercut in this process: every stage as a function on ``nn.Module``s and files, and the whole pipeline.

This is the Python API that ``import layercut`` exposes (see ``layercut/__init__.py``). Each stage returns its
typed result (``layercut.contracts.results``: ``TrainResult``, ``AnalyzeResult`` …), the record it also writes as JSON:

    import layercut as lc
    data = lc.load_data("textures", image_size=64)
    base = lc.train(data, "vgg11", "out/base", epochs=4)
    analysis = lc.analyze("out/base/model.safetensors", data, "out/analysis")
    print(analysis.cut_point.name, analysis.knee.found, base.accuracy)
    shown = lc.explain("out/base/model.safetensors", data, "out/explain", compare_with="out/slim/model.safetensors")
    model, spec = lc.load_model("out/base/model.safetensors")
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from torch import nn

from layercut.contracts import files
from layercut.contracts.configs import (
    EXPORT_SUFFIXES,
    AnalyzeConfig,
    CompareConfig,
    DataConfig,
    ExplainConfig,
    ExportConfig,
    ExportFormat,
    MlflowConfig,
    SelectConfig,
    SweepConfig,
    TrainConfig,
    TruncateConfig,
)
from layercut.contracts.files import RUN_FOLDERS
from layercut.contracts.kinds import StageKind
from layercut.contracts.plan import GIVEN, InputRole, PlanStep, cut_rule, pipeline_plan
from layercut.contracts.results import (
    AnalyzeResult,
    CompareResult,
    ExplainResult,
    ExportResult,
    ImportResult,
    RetrainResult,
    RunData,
    RunOutputs,
    RunSummary,
    SelectResult,
    StageResult,
    SweepResult,
    TrainResult,
    TruncateResult,
)
from layercut.progress_display import shown
from layercut.report import write_run_report
from layercut.settings import Settings
from layercut.stages import stages
from layercut.stages.architectures import IMAGENET_MEAN, IMAGENET_STD
from layercut.stages.checkpoint import ModelSpec, load_checkpoint, read_spec
from layercut.stages.data import Dataset
from layercut.stages.explain import explain_stage
from layercut.stages.export import default_export_path, export_stage
from layercut.stages.importing import import_weights
from layercut.stages.preflight import check_run_inputs
from layercut.stages.progress import SILENT, Reporter
from layercut.stages.run_summary import run_summary
from layercut.stages.select import link_or_copy, select_stage, sweep_stage
from layercut.stages.stages import (
    analyze_stage,
    compare_stage,
    retrain_stage,
    train_stage,
    truncate_stage,
    write_result,
)
from layercut.stages.stages import (
    load_data as load_stage_data,
)

__all__ = [
    "load_model",
    "load_data",
    "train",
    "analyze",
    "truncate",
    "retrain",
    "select",
    "sweep",
    "compare",
    "explain",
    "export",
    "run",
]

ResultT = TypeVar(
    "ResultT",
    TrainResult,
    RetrainResult,
    AnalyzeResult,
    TruncateResult,
    CompareResult,
    ExplainResult,
    SelectResult,
    SweepResult,
)
"""The result model of one stage."""


def read_data(config: DataConfig, reporter: Reporter = SILENT) -> Dataset:
    """Decode the data a config names, with this machine's dataset folder and download permission (Settings)."""
    settings = Settings()  # read now: the environment may have changed since the process started
    return load_stage_data(
        config, reporter, data_root=settings.resolved_data_root, allow_download=not settings.no_download
    )


def load_model(checkpoint: str | Path, device: str = "cpu") -> tuple[nn.Module, ModelSpec]:
    """A checkpoint as an eval-mode ``nn.Module`` plus its spec (classes, input size, mean/std)."""
    return load_checkpoint(checkpoint, device)


def import_model(
    weights: str | Path,
    out_path: str | Path,
    arch: str,
    classes: Sequence[str],
    image_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    reporter: Reporter | None = None,
    progress: bool = True,
) -> ImportResult:
    """Make a layercut checkpoint of a model trained elsewhere: ``weights`` is a ``torch.save``'d state dict
    (.pt/.pth, also inside a checkpoint dict) or a safetensors file, read without unpickling code and matched key by
    key against ``arch`` with ``len(classes)`` outputs (classes in the order of the model's outputs); ``mean`` and
    ``std`` are the normalisation it was trained with (ImageNet's by default)."""
    spec = ModelSpec(architecture=arch, classes=list(classes), image_size=image_size, mean=list(mean), std=list(std))
    with shown(reporter, progress) as reporter:
        return import_weights(weights, spec, out_path, reporter)


def load_data(
    source: str = "textures", image_size: int = 64, reporter: Reporter | None = None, progress: bool = True, **options
) -> Dataset:
    """Decode a dataset once (options: the fields of ``DataConfig``, e.g. seed, classes)."""
    config = DataConfig(source=source, image_size=image_size, **options)
    with shown(reporter, progress) as reporter:
        dataset = read_data(config, reporter)
    dataset.info["data_config"] = config.model_dump()  # so train() records exactly how it was loaded
    return dataset


def train(
    dataset: Dataset,
    arch: str,
    out_dir: str | Path,
    pretrained: bool = False,
    reporter: Reporter | None = None,
    progress: bool = True,
    **options,
) -> TrainResult:
    """Train a base model (options: the fields of ``TrainConfig``, e.g. epochs, lr)."""
    data_config = (
        DataConfig.model_validate(dataset.info["data_config"])
        if "data_config" in dataset.info
        else DataConfig(source=str(dataset.info.get("source", "custom")), image_size=dataset.image_size)
    )
    config = TrainConfig(**options)
    with shown(reporter, progress) as reporter:
        return stages.train_stage(dataset, data_config, arch, config, out_dir, pretrained, reporter)


def analyze(
    checkpoint: str | Path,
    dataset: Dataset,
    out_dir: str | Path,
    reporter: Reporter | None = None,
    progress: bool = True,
    **options,
) -> AnalyzeResult:
    """GBP maps, SSIM matrix, curves, knee and depth probes (options: the fields of ``AnalyzeConfig``)."""
    config = AnalyzeConfig(**options)
    with shown(reporter, progress) as reporter:
        return stages.analyze_stage(checkpoint, dataset, config, out_dir, reporter)


def truncate(
    checkpoint: str | Path,
    out_path: str | Path,
    cut: str | int = "knee",
    analysis: str | Path | None = None,
    dropout: float = 0.2,
) -> TruncateResult:
    """Cut a base model at the knee of ``analysis`` (its analysis.json) or at a named/indexed cut point."""
    return stages.truncate_stage(checkpoint, TruncateConfig(cut=str(cut), dropout=dropout), out_path, analysis)


def retrain(
    checkpoint: str | Path,
    dataset: Dataset,
    out_dir: str | Path,
    from_scratch: bool = False,
    reporter: Reporter | None = None,
    progress: bool = True,
    **options,
) -> RetrainResult:
    """Fine-tune (or train from scratch) a slim model (options: the fields of ``TrainConfig``)."""
    config = TrainConfig(**options)
    with shown(reporter, progress) as reporter:
        return stages.retrain_stage(checkpoint, dataset, config, out_dir, from_scratch, reporter)


def select(
    checkpoint: str | Path,
    dataset: Dataset,
    analysis: str | Path,
    out_dir: str | Path,
    max_drop: float = 1.0,
    min_accuracy: float | None = None,
    max_retrains: int = 6,
    dropout: float = 0.2,
    from_scratch: bool = False,
    reporter: Reporter | None = None,
    progress: bool = True,
    **options,
) -> SelectResult:
    """The auto cut: the smallest slim model of ``checkpoint`` whose validation accuracy after retraining is within
    ``max_drop`` points of the base (or at least ``min_accuracy`` percent), found from the depth probes and the knee
    of ``analysis`` (its analysis.json) and confirmed by retraining (options: the fields of ``TrainConfig``)."""
    config = SelectConfig(max_drop=max_drop, min_accuracy=min_accuracy, max_retrains=max_retrains)
    retrain = TrainConfig(**options)
    with shown(reporter, progress) as reporter:
        return select_stage(checkpoint, dataset, analysis, config, retrain, out_dir, dropout, from_scratch, reporter)


def sweep(
    checkpoint: str | Path,
    dataset: Dataset,
    out_dir: str | Path,
    cuts: str = "all",
    analysis: str | Path | None = None,
    max_drop: float = 1.0,
    min_accuracy: float | None = None,
    dropout: float = 0.2,
    from_scratch: bool = False,
    reporter: Reporter | None = None,
    progress: bool = True,
    **options,
) -> SweepResult:
    """A slim model retrained at each cut point ``cuts`` names (all, every:K, or "3,5,layer3.1"), with the same
    training (options: the fields of ``TrainConfig``); sweep.json and the trade-off chart."""
    config = SweepConfig(cuts=cuts, max_drop=max_drop, min_accuracy=min_accuracy, dropout=dropout)
    retrain = TrainConfig(**options)
    with shown(reporter, progress) as reporter:
        return sweep_stage(checkpoint, dataset, config, retrain, out_dir, analysis, from_scratch, reporter)


def compare(
    base: str | Path,
    slim: str | Path,
    dataset: Dataset,
    out_dir: str | Path,
    reporter: Reporter | None = None,
    progress: bool = True,
    **options,
) -> CompareResult:
    """Accuracy, F1, parameters, MACs, size and latency of two models (options: ``CompareConfig``)."""
    config = CompareConfig(**options)
    with shown(reporter, progress) as reporter:
        return stages.compare_stage(base, slim, dataset, config, out_dir, reporter)


def explain(
    checkpoint: str | Path,
    dataset: Dataset,
    out_dir: str | Path,
    compare_with: str | Path | None = None,
    reporter: Reporter | None = None,
    progress: bool = True,
    **options,
) -> ExplainResult:
    """CAMs, guided backprop, saliency, feature maps and receptive fields of test images, a second model
    (``compare_with``) beside it on the same images (options: the fields of ``ExplainConfig``)."""
    config = ExplainConfig(**options)
    with shown(reporter, progress) as reporter:
        return explain_stage(checkpoint, dataset, config, out_dir, reporter, compare_with)


def checkpoint_data(
    checkpoint: str | Path, source: str | None = None, data_root: str | None = None, reporter: Reporter = SILENT
) -> Dataset:
    """The dataset a checkpoint was trained on (as its spec records it, at its image size), unless ``source`` names
    another one; ``data_root`` is a folder of torchvision datasets."""
    spec = read_spec(checkpoint)
    config = DataConfig.model_validate(spec.data) if spec.data else DataConfig(image_size=spec.image_size)
    update: dict[str, object] = {"image_size": spec.image_size}
    if data_root is not None:
        update["data_root"] = data_root
    if source is not None:
        update["source"] = source
    return read_data(config.model_copy(update=update), reporter)


def export(
    checkpoint: str | Path,
    out: str | Path | None = None,
    format: ExportFormat = "onnx",
    data: Dataset | str | None = None,
    reporter: Reporter | None = None,
    progress: bool = True,
    **options,
) -> ExportResult:
    """Export a checkpoint as a deployable file: ``format`` onnx (``out`` defaults to model.onnx beside the checkpoint),
    torchscript (.ts) or exported-program (.pt2); its logits are checked against torch's on ``data``'s test images (a
    loaded dataset, or a source name read at the checkpoint's image size; random images when None) and it is timed on
    the CPU beside torch; export.json is written beside it (options: the fields of ``ExportConfig``, e.g. tolerance)."""
    config = ExportConfig(format=format, **options)
    target = Path(out) if out is not None else default_export_path(checkpoint, config.format)
    with shown(reporter, progress) as reporter:
        dataset = checkpoint_data(checkpoint, data, reporter=reporter) if isinstance(data, str) else data
        return export_stage(checkpoint, target, config, dataset, reporter)


def run(
    out_dir: str | Path,
    source: str = "textures",
    arch: str = "vgg11",
    image_size: int = 64,
    epochs: int = 5,
    cut: str | int = "auto",
    max_drop: float = 1.0,
    min_accuracy: float | None = None,
    reporter: Reporter | None = None,
    progress: bool = True,
    mlflow: str | None = None,
    checkpoint: str | Path | None = None,
) -> RunSummary:
    """The whole pipeline with default settings, cut by ``cut`` (auto: the smallest slim model within ``max_drop``
    points of the base's validation accuracy, or ``min_accuracy`` percent; knee; or a cut point); returns the
    summary also written to run.json. Progress shows as bars (notebook, terminal) or lines (a log) unless
    ``progress`` is False or a ``reporter`` is given. With ``mlflow`` (a tracking URI) the run is logged there and
    base and slim are registered (``layercut[mlflow]``; the ids are in ``<out_dir>/mlflow/mlflow.json``). With
    ``checkpoint`` (a model trained elsewhere, e.g. from ``import_model``) nothing is trained: that model is the base,
    at its own architecture and image size."""
    return run_pipeline(
        DataConfig(source=source, image_size=image_size),
        arch,
        out_dir,
        train=TrainConfig(epochs=epochs),
        cut=TruncateConfig(cut=str(cut)),
        select=SelectConfig(max_drop=max_drop, min_accuracy=min_accuracy),
        reporter=reporter,
        progress=progress,
        mlflow=MlflowConfig(tracking_uri=mlflow) if mlflow else None,
        checkpoint=checkpoint,
    )


@dataclass
class RunInProcess:
    """One pipeline run in this process: its settings, its folder, the data, and what each step made so far."""

    data: DataConfig
    arch: str
    out: Path
    dataset: Dataset
    train: TrainConfig
    retrain: TrainConfig
    analyze: AnalyzeConfig
    cut: TruncateConfig
    select: SelectConfig
    sweep: SweepConfig | None
    compare: CompareConfig
    explain: ExplainConfig
    pretrained: bool
    retrain_from_scratch: bool
    reporter: Reporter
    export: ExportConfig | None = None
    results: dict[StageKind, StageResult] = field(default_factory=dict)
    checkpoints: dict[str, Path] = field(default_factory=dict)

    def folder(self, kind: str) -> Path:
        """The folder of the run in which the step of ``kind`` writes."""
        return self.out / RUN_FOLDERS[kind]

    def result(self, kind: StageKind, model: type[ResultT]) -> ResultT:
        """What the step of ``kind`` returned, as the model it must be."""
        result = self.results[kind]
        if not isinstance(result, model):
            raise TypeError(f"the {kind} step returned a {type(result).__name__}, not a {model.__name__}")
        return result

    def checkpoint(self, step: PlanStep, role: InputRole) -> Path:
        """The checkpoint made by the step that feeds ``role`` of ``step``."""
        return self.checkpoints[str(step.source(role))]


def _train_step(run: RunInProcess, step: PlanStep) -> TrainResult:
    result = train_stage(
        run.dataset,
        run.data,
        run.arch,
        run.train,
        run.folder("train"),
        pretrained=run.pretrained,
        reporter=run.reporter,
    )
    run.checkpoints["train"] = run.folder("train") / files.CHECKPOINT
    return result


def _analyze_step(run: RunInProcess, step: PlanStep) -> AnalyzeResult:
    return analyze_stage(run.checkpoint(step, "model"), run.dataset, run.analyze, run.folder("analyze"), run.reporter)


def _truncate_step(run: RunInProcess, step: PlanStep) -> TruncateResult:
    analysis = run.folder("analyze") / files.ANALYSIS_JSON if step.source("analysis") else None
    initial = run.folder("truncate") / files.INITIAL_CHECKPOINT
    result = truncate_stage(run.checkpoint(step, "model"), run.cut, initial, analysis)
    write_result(run.folder("truncate") / files.TRUNCATE_JSON, result)
    run.reporter.update("truncate", 1.0, f"cut at {result.cut_point.name}")
    run.checkpoints["truncate"] = initial
    return result


def _select_step(run: RunInProcess, step: PlanStep) -> SelectResult:
    """The auto cut; the chosen candidate's folder becomes the run's slim/ (as truncate and retrain would write it)."""
    result = select_stage(
        run.checkpoint(step, "model"),
        run.dataset,
        run.folder("analyze") / files.ANALYSIS_JSON,
        run.select,
        run.retrain,
        run.folder("select"),
        run.cut.dropout,
        run.retrain_from_scratch,
        run.reporter,
    )
    slim = run.folder("retrain")
    shutil.rmtree(slim, ignore_errors=True)
    shutil.copytree(
        result.chosen.folder, slim, copy_function=lambda source, target: link_or_copy(Path(source), Path(target))
    )
    run.checkpoints["select"] = slim / files.CHECKPOINT
    return result


def _sweep_step(run: RunInProcess, step: PlanStep) -> SweepResult:
    """The whole sweep, its cut points one after the other (the service fans them out as jobs from this step)."""
    assert run.sweep is not None  # the plan has a sweep step only when the run asks for one
    return sweep_stage(
        run.checkpoint(step, "model"),
        run.dataset,
        run.sweep,
        run.retrain,
        run.folder("sweep"),
        run.folder("analyze") / files.ANALYSIS_JSON,
        run.retrain_from_scratch,
        run.reporter,
    )


def _retrain_step(run: RunInProcess, step: PlanStep) -> RetrainResult:
    result = retrain_stage(
        run.checkpoint(step, "model"),
        run.dataset,
        run.retrain,
        run.folder("retrain"),
        from_scratch=run.retrain_from_scratch,
        reporter=run.reporter,
    )
    run.checkpoints["retrain"] = run.folder("retrain") / files.CHECKPOINT
    return result


def _compare_step(run: RunInProcess, step: PlanStep) -> CompareResult:
    return compare_stage(
        run.checkpoint(step, "base"),
        run.checkpoint(step, "slim"),
        run.dataset,
        run.compare,
        run.folder("compare"),
        reporter=run.reporter,
    )


def _explain_step(run: RunInProcess, step: PlanStep) -> ExplainResult:
    return explain_stage(
        run.checkpoint(step, "model"),
        run.dataset,
        run.explain,
        run.folder("explain"),
        reporter=run.reporter,
        compare_checkpoint=run.checkpoint(step, "compare_with"),
    )


def _export_step(run: RunInProcess, step: PlanStep) -> ExportResult:
    assert run.export is not None  # the plan has an export step only when the run asks for one
    target = run.folder("export") / f"model{EXPORT_SUFFIXES[run.export.format]}"
    return export_stage(run.checkpoint(step, "model"), target, run.export, run.dataset, reporter=run.reporter)


STEP_RUNNERS: dict[str, Callable[[RunInProcess, PlanStep], StageResult]] = {
    "train": _train_step,
    "analyze": _analyze_step,
    "truncate": _truncate_step,
    "retrain": _retrain_step,
    "select": _select_step,
    "sweep_plan": _sweep_step,
    "compare": _compare_step,
    "explain": _explain_step,
    "export": _export_step,
}
"""How this process runs each kind of step of the plan (the job engine runs the same plan as jobs)."""


def run_pipeline(
    data: DataConfig,
    arch: str,
    out_dir: str | Path,
    train: TrainConfig | None = None,
    retrain: TrainConfig | None = None,
    analyze: AnalyzeConfig | None = None,
    cut: TruncateConfig | None = None,
    compare: CompareConfig | None = None,
    explain: ExplainConfig | None = None,
    pretrained: bool = False,
    retrain_from_scratch: bool = False,
    reporter: Reporter | None = None,
    select: SelectConfig | None = None,
    sweep: SweepConfig | None = None,
    progress: bool = True,
    export: ExportConfig | None = None,
    mlflow: MlflowConfig | None = None,
    checkpoint: str | Path | None = None,
) -> RunSummary:
    """Run the pipeline's plan into ``out_dir`` (base/, analysis/, select/ under the auto cut, slim/, sweep/ when
    asked, compare/, explain/), write run.json and report.html, log the run to ``mlflow`` when given, and return
    run.json's summary. Every input that can be checked without data is checked first (an MLflow server that does
    not answer too); progress shows as with ``run``. With ``checkpoint`` there is no train step: that model (its
    architecture and image size, not ``arch``'s) is the base, linked into base/."""
    out = Path(out_dir)
    cut = cut or TruncateConfig()
    if checkpoint is not None:
        spec = read_spec(checkpoint)
        classes = data.classes or list(spec.classes)  # read in the order of the model's head
        arch, data = spec.architecture, data.model_copy(update={"image_size": spec.image_size, "classes": classes})
    plan = pipeline_plan(
        train=checkpoint is None,
        stop_after="explain",
        cut=cut_rule(cut.cut),
        sweep=sweep is not None,
        export=export is not None,
    )
    check_run_inputs(data, arch, cut, sweep, pretrained)
    if mlflow is not None:
        from layercut.stages.tracking import check_tracking

        check_tracking(mlflow)
    with shown(reporter, progress) as reporter:
        dataset = read_data(data, reporter)
        run = RunInProcess(
            data=data,
            arch=arch,
            out=out,
            dataset=dataset,
            train=train or TrainConfig(),
            retrain=retrain or train or TrainConfig(),
            analyze=analyze or AnalyzeConfig(),
            cut=cut,
            select=select or SelectConfig(),
            sweep=sweep,
            compare=compare or CompareConfig(),
            explain=explain or ExplainConfig(),
            pretrained=pretrained,
            retrain_from_scratch=retrain_from_scratch,
            reporter=reporter,
            export=export,
        )
        if checkpoint is not None:
            given = run.folder("train") / files.CHECKPOINT
            given.parent.mkdir(parents=True, exist_ok=True)
            given.unlink(missing_ok=True)
            link_or_copy(Path(checkpoint), given)
            run.checkpoints[GIVEN] = given
        for step in plan.steps:
            run.results[step.kind] = STEP_RUNNERS[step.kind](run, step)

        summary = _run_summary(run)
        write_result(out / files.RUN_JSON, summary)
        reporter.update("report", 0.0, f"writing {files.REPORT_HTML}")
        write_run_report(out)
        reporter.update("report", 1.0, f"{files.REPORT_HTML} written")
        if mlflow is not None:
            from layercut.stages.tracking import publish_run

            publish_run(out, mlflow, dataset, reporter)
            write_run_report(out)  # now with where the run was logged (the logged copy was written before)
        return summary


def _run_summary(run: RunInProcess) -> RunSummary:
    """run.json from this run's results (the chosen slim model is in slim/, whichever rule cut it)."""
    trained = run.result("train", TrainResult) if "train" in run.results else None
    slim = run.folder("retrain")
    retrained = RetrainResult.model_validate_json((slim / files.METRICS_JSON).read_text(encoding="utf-8"))
    selected = run.results.get("select")
    swept = run.results.get("sweep_plan")
    return run_summary(
        data=RunData(
            source=run.data.source,
            classes=list(run.dataset.classes),
            image_size=run.data.image_size,
            splits=(trained or retrained).data.sizes,
        ),
        architecture=run.arch,
        trained=trained,
        analysis=run.result("analyze", AnalyzeResult),
        cut=selected if isinstance(selected, SelectResult) else run.result("truncate", TruncateResult),
        retrained=retrained,
        compared=run.result("compare", CompareResult),
        explained=run.result("explain", ExplainResult),
        budget=run.select,
        swept=swept if isinstance(swept, SweepResult) else None,
        outputs=RunOutputs(
            base_checkpoint=str(run.checkpoints["train" if trained is not None else GIVEN]),
            slim_checkpoint=str(slim / files.CHECKPOINT),
            analysis=str(run.folder("analyze") / files.ANALYSIS_JSON),
            compare=str(run.folder("compare") / files.COMPARE_JSON),
            explain=str(run.folder("explain") / files.EXPLAIN_JSON),
            report=str(run.out / files.REPORT_HTML),
            export=str(run.result("export", ExportResult).file) if "export" in run.results else None,
        ),
    )
