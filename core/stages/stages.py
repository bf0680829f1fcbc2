"""The pipeline's stages as plain functions: each reads its inputs, writes files into ``out_dir`` and
returns its typed result (``layercut.contracts.results``), the same record it writes as JSON. The command line,
the Python API and the service workers all call these.

Each stage takes a ``Reporter`` for progress and cancellation (docs/design.md §2).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from pydantic import BaseModel, ValidationError
from torch import nn

from layercut.contracts import files
from layercut.contracts.configs import (
    AnalyzeConfig,
    BudgetConfig,
    CompareConfig,
    DataConfig,
    TrainConfig,
    TruncateConfig,
)
from layercut.contracts.errors import Cancelled, LayercutError, first_error
from layercut.contracts.results import (
    AnalyzeMemory,
    AnalyzeResult,
    AnalyzeSeconds,
    ChosenCutPoint,
    ClassificationReport,
    CompareResult,
    Comparison,
    Curves,
    CutPointInfo,
    DataInfo,
    EpochRow,
    GbpSettings,
    Knee,
    LatencyMeasurement,
    MapImageSettings,
    ProbeSettings,
    ProfiledModel,
    RetrainResult,
    SsimSettings,
    TrainResult,
    TruncateResult,
)
from layercut.contracts.spec import CutPointRef, ModelSpec
from layercut.stages import plots
from layercut.stages.analysis_maps import stream_maps
from layercut.stages.analysis_memory import MIB, peak_resident_bytes, plan_memory
from layercut.stages.architectures import IMAGENET_MEAN, IMAGENET_STD, build_model, check_architecture
from layercut.stages.checkpoint import load_checkpoint, save_checkpoint
from layercut.stages.curves import adjacent_curve, cut_curve
from layercut.stages.cut_search import probe_choice
from layercut.stages.cutpoints import cut_points, describe_cut_points, resolve_cut_point
from layercut.stages.data import SPLITS, Dataset, dataset_statistics, load_dataset, stratified_sample
from layercut.stages.devices import resolve_device
from layercut.stages.knee import find_knee
from layercut.stages.metrics import PAIR_EXAMPLES, classification_report, confused_pairs, roc_curves, to_probabilities
from layercut.stages.probes import depth_probes, fit_head
from layercut.stages.profiling import checkpoint_bytes, compare_models, count_macs, count_parameters, measure_latency
from layercut.stages.progress import SILENT, Reporter
from layercut.stages.training import normalise, predict, reinitialise, seed_everything, train_model
from layercut.stages.truncation import truncate

CHECKPOINT_NAME = files.CHECKPOINT
CONFUSED_PAIRS = 6  # rows of confused_pairs.png
SSIM_ENGINES = {"numba": "fused numba kernels on the CPU", "torch": "torch"}
"""How analysis.json names the SSIM engine that ran (``SimilarityAccumulator.engine``)."""

TrainingResultT = TypeVar("TrainingResultT", TrainResult, RetrainResult)
"""The result a training stage records: a base model's (train) or a slim model's (retrain)."""


def write_result(path: str | Path, result: BaseModel) -> Path:
    """Write a result model as indented JSON, as its model says (keys by alias, optional keys left out when unset);
    a non-finite float (a diverged training's NaN loss) is written as null, so the file is strict JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(result.model_dump_json(indent=2), encoding="utf-8")
    return path


def load_data(
    config: DataConfig,
    reporter: Reporter = SILENT,
    *,
    data_root: str | Path | None = None,
    allow_download: bool = True,
) -> Dataset:
    """Decode the dataset a ``DataConfig`` names (once; stages then share the tensors).

    ``data_root`` is the caller's folder of torchvision datasets (``Settings().resolved_data_root``);
    ``config.data_root``, when set, wins. ``allow_download`` lets a missing torchvision dataset be fetched.
    """
    return load_dataset(
        config.source,
        image_size=config.image_size,
        seed=config.seed,
        val_fraction=config.val_fraction,
        test_fraction=config.test_fraction,
        classes=config.classes,
        skip_unreadable=config.skip_unreadable,
        allow_mixed_sizes=config.allow_mixed_sizes,
        data_root=config.data_root or data_root,
        allow_download=allow_download,
        reporter=reporter,
    )


def check_dataset_fits(spec: ModelSpec, dataset: Dataset) -> None:
    if list(dataset.classes) != list(spec.classes):
        raise LayercutError(
            f"the model was trained on classes {spec.classes} but the data has {dataset.classes}; "
            "use the same dataset (and class list) the model was trained on"
        )
    if dataset.image_size != spec.image_size:
        raise LayercutError(
            f"the model expects {spec.image_size} px images but the data was loaded at {dataset.image_size} px"
        )


def data_info(dataset: Dataset) -> DataInfo:
    """The dataset's description as the typed record a training result carries; a hand-made ``Dataset`` whose
    ``info`` does not describe its data is an input error."""
    try:
        return DataInfo.model_validate(dataset.info)
    except ValidationError as exc:
        raise LayercutError(
            f"the dataset's info does not describe it as layercut's loaders do ({exc.error_count()} problem(s), "
            f"first: {first_error(exc)}); load the data with layercut.load_data"
        ) from exc


def evaluate_with_logits(
    model: nn.Module, spec: ModelSpec, dataset: Dataset, device: torch.device
) -> tuple[dict, dict[str, torch.Tensor]]:
    """Classification reports on the validation and test splits, and the logits behind them (for the pictures)."""
    reports, logits = {}, {}
    for name, split in (("val", dataset.val), ("test", dataset.test)):
        logits[name] = predict(model, split, spec.mean, spec.std, device)
        reports[name] = classification_report(logits[name], split.labels, dataset.classes)
    return reports, logits


def _fit_and_record(
    model: nn.Module,
    spec: ModelSpec,
    dataset: Dataset,
    config: TrainConfig,
    out_dir: Path,
    reporter: Reporter,
    result_type: type[TrainingResultT],
    keep_start: bool = False,
    **extra: Any,
) -> TrainingResultT:
    """Train, save the best checkpoint, evaluate and draw the pictures; shared by train and retrain, whose
    ``result_type`` (TrainResult or RetrainResult) is built from the common record plus its own ``extra`` fields."""
    stage = "train" if result_type is TrainResult else "retrain"
    info = data_info(dataset)
    trained = train_model(
        model, dataset.train, dataset.val, spec.mean, spec.std, config, reporter, stage=stage, keep_start=keep_start
    )
    device = torch.device(trained.device)
    checkpoint = save_checkpoint(model.cpu(), spec, out_dir / CHECKPOINT_NAME)
    model.to(device)
    reports, logits = evaluate_with_logits(model, spec, dataset, device)
    probs = to_probabilities(logits["test"])  # the same probabilities the test report was computed from
    val, test = (
        ClassificationReport.model_validate(reports["val"]),
        ClassificationReport.model_validate(reports["test"]),
    )
    result = result_type(
        stage=stage,
        checkpoint=str(checkpoint),
        architecture=spec.architecture,
        cut_point=spec.cut_point,
        classes=list(dataset.classes),
        params=count_parameters(model),
        accuracy=test.accuracy,
        macro_f1=test.macro_f1,
        best_epoch=trained.best_epoch,
        best_val_accuracy=trained.best_val_accuracy,
        stopped_early=trained.stopped_early,
        epochs_run=len(trained.history),
        images_per_second=trained.images_per_second,
        device=trained.device,
        history=[EpochRow.model_validate(row) for row in trained.history],
        val=val,
        test=test,
        data=info,
        config=config,
        **extra,
    )
    title = f"{spec.architecture}{' (slim, cut at ' + spec.cut_point.name + ')' if spec.cut_point else ''}"
    plots.plot_training_curves(trained.history, out_dir / "training_curves.png", f"{stage}: {title}")
    plots.plot_confusion_matrix(
        test.confusion_matrix,
        dataset.classes,
        out_dir / "confusion_matrix.png",
        f"{title}: test confusion matrix (accuracy {test.accuracy:.1%})",
    )
    plots.plot_roc_curves(
        roc_curves(probs, dataset.test.labels, dataset.classes),
        out_dir / "roc_curves.png",
        f"{title}: one-vs-rest ROC on the test split",
    )
    _confused_pairs_picture(probs, dataset, out_dir / "confused_pairs.png", f"{title}: most confused test pairs")
    write_result(out_dir / files.METRICS_JSON, result)
    return result


def _confused_pairs_picture(probs: torch.Tensor, dataset: Dataset, path: Path, title: str) -> Path:
    """The most frequent test mistakes with their most confident example images (or a note that there are none)."""
    confidence, predicted = probs.max(dim=1)
    pairs = confused_pairs(
        dataset.test.labels,
        predicted,
        len(dataset.classes),
        top=CONFUSED_PAIRS,
        examples=PAIR_EXAMPLES,
        confidences=confidence,
    )
    return plots.plot_confused_pairs(
        pairs,
        dataset.test.images,
        dataset.classes,
        path,
        title,
        confidences=confidence.numpy(),
        total=len(dataset.test),
    )


def _class_counts_picture(dataset: Dataset, path: Path) -> Path:
    """Images per class in each split, from the dataset's description (counted from the labels if it lacks them)."""
    per_split = dataset.info.get("per_class") or {}
    if not all(split in per_split for split in SPLITS):
        per_split = {
            split: dict(
                zip(
                    dataset.classes,
                    torch.bincount(dataset.split(split).labels, minlength=len(dataset.classes)).tolist(),
                )
            )
            for split in SPLITS
        }
    sizes = ", ".join(f"{split} {len(dataset.split(split))}" for split in SPLITS)
    return plots.plot_class_counts(
        {split: per_split[split] for split in SPLITS}, path, f"{dataset.name}: images per class and split ({sizes})"
    )


def train_stage(
    dataset: Dataset,
    data_config: DataConfig,
    arch: str,
    config: TrainConfig,
    out_dir: str | Path,
    pretrained: bool = False,
    reporter: Reporter = SILENT,
) -> TrainResult:
    """Train a base model of ``arch`` on ``dataset``; writes model.safetensors, metrics.json and pictures."""
    check_architecture(arch)
    out_dir = Path(out_dir)
    seed_everything(config.seed)  # the initial weights are part of what the seed fixes
    model = build_model(arch, len(dataset.classes), pretrained=pretrained)
    mean, std = (list(IMAGENET_MEAN), list(IMAGENET_STD)) if pretrained else dataset_statistics(dataset.train)
    spec = ModelSpec(
        architecture=arch,
        classes=list(dataset.classes),
        image_size=dataset.image_size,
        source_channels=dataset.source_channels,
        mean=list(mean),
        std=list(std),
        pretrained=pretrained,
        data=data_config.model_dump(),
    )
    _class_counts_picture(dataset, out_dir / "class_counts.png")
    return _fit_and_record(model, spec, dataset, config, out_dir, reporter, TrainResult, pretrained=pretrained)


def retrain_stage(
    checkpoint_path: str | Path,
    dataset: Dataset,
    config: TrainConfig,
    out_dir: str | Path,
    from_scratch: bool = False,
    reporter: Reporter = SILENT,
) -> RetrainResult:
    """Fine-tune a slim model from its kept weights (or from scratch); same outputs as ``train_stage``."""
    model, spec = load_checkpoint(checkpoint_path)
    check_dataset_fits(spec, dataset)
    head_fitted = not from_scratch and spec.is_slim and config.head_init == "probe"
    if from_scratch:
        seed_everything(config.seed)
        reinitialise(model)
    elif head_fitted:
        device = resolve_device(config.device)
        fit_head(model.to(device), dataset.train, spec.mean, spec.std, device, seed=config.seed, reporter=reporter)
    return _fit_and_record(
        model,
        spec,
        dataset,
        config,
        Path(out_dir),
        reporter,
        RetrainResult,
        keep_start=head_fitted,
        from_scratch=from_scratch,
        initial_checkpoint=str(checkpoint_path),
    )


def analyze_stage(
    checkpoint_path: str | Path,
    dataset: Dataset,
    config: AnalyzeConfig,
    out_dir: str | Path,
    reporter: Reporter = SILENT,
) -> AnalyzeResult:
    """GBP maps of every cut point for probe images, their SSIM matrix, both curves and the knee."""
    out_dir = Path(out_dir)
    started = time.perf_counter()
    device = resolve_device(config.device)
    model, spec = load_checkpoint(checkpoint_path, device)
    check_dataset_fits(spec, dataset)
    points = cut_points(model)
    if len(points) < 3:
        raise LayercutError(f"{spec.architecture} has {len(points)} cut points; the analysis needs at least 3")
    infos = describe_cut_points(model.cpu(), spec.image_size)
    model.to(device)

    probe_idx = stratified_sample(dataset.val.labels, config.probes_per_class, config.max_probes, config.probe_seed)
    probe_uint8 = dataset.val.images[probe_idx]
    probe_labels = dataset.val.labels[probe_idx]
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    probes = normalise(probe_uint8, mean, std)

    maps_end = 0.8 if config.depth_probes else 1.0
    names = [p.name for p in points]
    plan = plan_memory(
        model,
        tuple(probes.shape[1:]),
        len(points),
        len(probes),
        batch_size=config.batch_size,
        budget_mb=config.memory_budget_mb,
        rule=config.gbp_rule,
        device=device,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    streamed = stream_maps(
        model,
        probes,
        out_dir / files.GBP_MAPS_NPZ,
        {
            "probe_images": probes.numpy().astype(np.float32),
            "probe_labels": probe_labels.numpy(),
            "probe_indices": probe_idx.numpy(),
            "cut_point_names": np.array(names),
        },
        rule=config.gbp_rule,
        batch_size=plan.batch_size,
        grayscale=config.grayscale,
        data_range=config.ssim_data_range,
        grid_rows=config.grid_rows,
        device=device,
        reporter=reporter.scaled(0.0, maps_end),
    )
    matrix = streamed.matrix
    t0 = time.perf_counter()
    probed = (
        depth_probes(
            model,
            dataset.train,
            dataset.val,
            spec.mean,
            spec.std,
            device,
            max_train_images=config.depth_probe_images,
            seed=config.probe_seed,
            reporter=reporter.scaled(maps_end, 1.0),
        )
        if config.depth_probes
        else None
    )
    t_probes = time.perf_counter() - t0 if probed is not None else None
    curves = {"cut": cut_curve(matrix), "adjacent": adjacent_curve(matrix)}
    knee = find_knee(
        curves[config.curve], S=config.knee_sensitivity, curve=config.knee_curve, direction=config.knee_direction
    )
    chosen = points[knee.index]
    points_info = [CutPointInfo(**dataclasses.asdict(info)) for info in infos]
    analysis = AnalyzeResult(
        stage="analyze",
        checkpoint=str(checkpoint_path),
        architecture=spec.architecture,
        image_size=spec.image_size,
        classes=list(spec.classes),
        cut_points=points_info,
        probes=ProbeSettings(
            split="val",
            count=int(len(probe_idx)),
            per_class=config.probes_per_class,
            max=config.max_probes,
            seed=config.probe_seed,
            indices=probe_idx.tolist(),
            labels=probe_labels.tolist(),
        ),
        gbp=GbpSettings(
            definition="gradient of the sum of all activations at the cut point w.r.t. the normalised input image",
            rule=config.gbp_rule,
            batch_size=plan.batch_size,
        ),
        map_image=MapImageSettings(
            normalisation="(g - mean) / (std + 1e-7) * 0.25 + 0.5, clipped to [0, 1], per map",
            grayscale=config.grayscale,
        ),
        ssim=SsimSettings(
            implementation=f"batched float64 ({SSIM_ENGINES[streamed.ssim_engine]}), equal to "
            "skimage.metrics.structural_similarity",
            data_range=config.ssim_data_range,
            win_size=7,
            k1=0.01,
            k2=0.03,
            gaussian_weights=False,
            covariance="sample",
            border_cropped=3,
            channels=streamed.channels,
        ),
        similarity_matrix=matrix.tolist(),
        curves=Curves(cut=curves["cut"].tolist(), adjacent=curves["adjacent"].tolist()),
        knee=Knee(curve_mode=config.curve, **knee.to_dict()),
        knee_found=knee.found,
        cut_point=ChosenCutPoint(
            **points_info[chosen.index].model_dump(),
            curve_value=float(curves[config.curve][min(knee.index, len(curves[config.curve]) - 1)]),
        ),
        depth_probes=probed,
        device=str(device),
        seconds=AnalyzeSeconds(
            gbp=streamed.gbp_seconds,
            ssim=streamed.ssim_seconds,
            maps=streamed.maps_seconds,
            depth_probes=t_probes,
            total=time.perf_counter() - started,
        ),
        memory=AnalyzeMemory(
            budget_mb=None if plan.budget is None else plan.budget / MIB,
            batch_size=plan.batch_size,
            resident_at_start_mb=plan.resident / MIB,
            gbp_graph_mb_per_image=plan.graph_per_image / MIB,
            maps_mb_per_image=plan.maps_per_image / MIB,
            ssim_mb=plan.ssim / MIB,
            estimated_peak_mb=plan.peak() / MIB,
            peak_resident_mb=peak_resident_bytes() / MIB,
        ),
        config=config,
    )
    write_result(out_dir / files.ANALYSIS_JSON, analysis)
    _analysis_pictures(analysis, streamed.grid_images, probe_uint8.float() / 255.0, spec, out_dir, config)
    return analysis


def _analysis_pictures(
    analysis: AnalyzeResult,
    images: torch.Tensor,
    probes: torch.Tensor,
    spec: ModelSpec,
    out_dir: Path,
    config: AnalyzeConfig,
) -> None:
    """The SSIM curve with its knee, the similarity heat map and the GBP grid (probes given in [0, 1])."""
    names = [point.name for point in analysis.cut_points]
    knee = analysis.knee
    model_name = spec.architecture
    plots.plot_ssim_curve(
        analysis.curves.model_dump(),
        knee.index,
        knee.found,
        names,
        config.curve,
        out_dir / "ssim_curve.png",
        f"{model_name}: SSIM between depths ({config.curve} curve), knee at {analysis.cut_point.name}",
    )
    plots.plot_similarity_matrix(
        np.array(analysis.similarity_matrix),
        names,
        out_dir / "similarity_matrix.png",
        f"{model_name}: SSIM of GBP maps between cut points",
    )
    if analysis.depth_probes is not None:
        default = BudgetConfig()
        depth_probes_picture(
            analysis,
            default.threshold(analysis.depth_probes.base_val_accuracy),
            analysis.depth_probes.base_val_accuracy,
            out_dir / files.DEPTH_PROBES_PNG,
            budget_name=f"default budget ({default.max_drop:g} point)",
        )
    rows = min(config.grid_rows, images.shape[0])
    plots.plot_gbp_grid(
        images[:rows].numpy(),
        probes[:rows].numpy(),
        names,
        out_dir / "gbp_grid.png",
        f"{model_name}: guided backprop maps across depth",
        knee.index,
    )


def depth_probes_picture(
    analysis: AnalyzeResult, threshold: float, base_accuracy: float, path: Path, budget_name: str = "budget"
) -> Path:
    """The probe curve beside the SSIM cut curve, with the budget band (validation ≥ ``threshold``) and the probe's
    choice under it: drawn by analyze with the default budget, and again by select and sweep with the user's."""
    assert analysis.depth_probes is not None, "an analysis with depth probes"
    curve = analysis.depth_probes.curve
    return plots.plot_depth_probes(
        curve,
        analysis.curves.cut,
        [point.name for point in analysis.cut_points],
        knee_index=analysis.knee.index,
        threshold=threshold,
        base_accuracy=base_accuracy,
        probe_index=probe_choice(curve, threshold),
        path=path,
        title=f"{analysis.architecture}: depth probes (a linear classifier per cut point) beside the SSIM curve",
        budget_name=budget_name,
    )


def truncate_stage(
    checkpoint_path: str | Path,
    config: TruncateConfig,
    out_path: str | Path,
    analysis_path: str | Path | None = None,
) -> TruncateResult:
    """Cut a base model at the knee of an analysis (or a named cut point) and attach a new, untrained head.

    Writes the slim checkpoint to ``out_path``; the caller records the result (truncate.json) where it keeps it.
    """
    if config.cut == "auto":
        raise LayercutError(
            "cut 'auto' retrains candidate slim models to keep the accuracy budget, which truncate alone cannot: "
            "use `layercut select` (or `layercut run`), or give truncate knee, a cut point index or a name"
        )
    model, spec = load_checkpoint(checkpoint_path)
    if spec.is_slim:
        raise LayercutError(
            f"{checkpoint_path} is already a slim model (cut at {spec.cut_point.name}); truncate its base model"
        )
    if config.cut == "knee":
        if analysis_path is None:
            raise LayercutError("--cut knee needs the analysis.json of this model (--analysis); or name a cut point")
        analysis = read_analysis(analysis_path)
        if analysis.architecture != spec.architecture:
            raise LayercutError(f"{analysis_path} analysed a {analysis.architecture}, not this {spec.architecture}")
        which: int | str = analysis.cut_point.name
    else:
        which = config.cut
    point = resolve_cut_point(model, which)
    slim = truncate(model, point, spec.num_classes, dropout=config.dropout, image_size=spec.image_size)
    slim_spec = spec.model_copy(
        update={"cut_point": CutPointRef(index=point.index, name=point.name), "head_dropout": config.dropout}
    )
    save_checkpoint(slim, slim_spec, out_path)
    base_params, slim_params = count_parameters(model), count_parameters(slim)
    return TruncateResult(
        stage="truncate",
        checkpoint=str(out_path),
        cut_point=CutPointRef(index=point.index, name=point.name),
        chosen_by="knee" if config.cut == "knee" else "user",
        base_params=base_params,
        slim_params=slim_params,
        params_kept=slim_params / base_params,
        cut_points_total=len(cut_points(model)),
    )


def read_analysis(path: str | Path) -> AnalyzeResult:
    """An analysis.json read into its model; a file that is missing or is not one is an input error."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise LayercutError(f"cannot read the analysis {path}: {exc.strerror or exc}") from exc
    try:
        return AnalyzeResult.model_validate_json(text)
    except ValidationError as exc:
        raise LayercutError(
            f"{path} is not an analysis.json written by `layercut analyze` ({first_error(exc)}); run analyze again"
        ) from exc


def _profile(path: Path, dataset: Dataset, config: CompareConfig, reporter: Reporter, label: str) -> ProfiledModel:
    """Test metrics, parameters, MACs, checkpoint size and latency of one model of a comparison."""
    device = resolve_device(config.device)
    model, spec = load_checkpoint(path, device)
    check_dataset_fits(spec, dataset)
    report = classification_report(
        predict(model, dataset.test, spec.mean, spec.std, device), dataset.test.labels, dataset.classes
    )
    model.cpu()
    shape = (1, 3, spec.image_size, spec.image_size)
    targets = [("cpu", "cpu")] + ([("gpu", str(device))] if device.type == "cuda" else [])
    runs = [(name, target, batch) for name, target in targets for batch in config.latency_batches]
    latency: dict[str, LatencyMeasurement] = {}
    torch_share = 0.7 if config.onnxruntime else 1.0  # of this model's progress; ONNX Runtime's timing the rest
    for step, (name, target, batch) in enumerate(runs):
        reporter.update("compare", torch_share * step / len(runs), f"timing {label} on {name} at batch {batch}")
        latency[f"{name}_b{batch}"] = LatencyMeasurement.model_validate(
            measure_latency(
                model,
                (batch, *shape[1:]),
                device=target,
                warmup=config.latency_warmup,
                repeats=config.latency_repeats,
                before_each=lambda: reporter.check("compare"),
            )
        )
    onnxruntime_error = None
    if config.onnxruntime:
        latency, onnxruntime_error = _with_onnxruntime(
            latency, model, spec, config, reporter.scaled(torch_share, 1.0), label
        )
    test = ClassificationReport.model_validate(report)
    return ProfiledModel(
        checkpoint=str(path),
        architecture=spec.architecture,
        cut_point=spec.cut_point,
        accuracy=test.accuracy,
        macro_f1=test.macro_f1,
        params=count_parameters(model),
        macs=count_macs(model, shape),
        checkpoint_bytes=checkpoint_bytes(path),
        latency=latency,
        test=test,
        onnxruntime_error=onnxruntime_error,
    )


def _with_onnxruntime(
    latency: dict[str, LatencyMeasurement],
    model: nn.Module,
    spec: ModelSpec,
    config: CompareConfig,
    reporter: Reporter,
    label: str,
) -> tuple[dict[str, LatencyMeasurement], str | None]:
    """The torch latencies followed by ONNX Runtime's on the CPU at the same batch sizes (``onnxruntime_cpu_b1`` …),
    and why ONNX Runtime could not time the model, if it could not (the comparison goes on without it)."""
    from layercut.stages.export import onnxruntime_latency  # here: the export module imports this one

    try:
        timed = onnxruntime_latency(
            model,
            spec.image_size,
            config.latency_batches,
            warmup=config.latency_warmup,
            repeats=config.latency_repeats,
            reporter=reporter,
            label=label,
        )
    except Cancelled:
        raise
    except Exception as exc:  # noqa: BLE001 - an export ONNX cannot express costs the ONNX numbers, not the comparison
        return latency, f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"
    return {**latency, **timed}, None


def compare_stage(
    base_checkpoint: str | Path,
    slim_checkpoint: str | Path,
    dataset: Dataset,
    config: CompareConfig,
    out_dir: str | Path,
    reporter: Reporter = SILENT,
) -> CompareResult:
    """Accuracy, F1, size and speed of two trained models on the same test split; compare.json and a chart."""
    out_dir = Path(out_dir)
    base = _profile(Path(base_checkpoint), dataset, config, reporter.scaled(0.0, 0.5), "base")
    reporter.update("compare", 0.5, "base model measured")
    slim = _profile(Path(slim_checkpoint), dataset, config, reporter.scaled(0.5, 1.0), "slim")
    comparison = Comparison.model_validate(compare_models(base.model_dump(), slim.model_dump()))
    result = CompareResult(
        stage="compare",
        base=base,
        slim=slim,
        comparison=comparison,
        threads=torch.get_num_threads(),
        test_images=int(len(dataset.test.labels)),
    )
    write_result(out_dir / files.COMPARE_JSON, result)
    plots.plot_comparison(
        comparison.model_dump(),
        out_dir / "compare.png",
        f"base {base.architecture} vs slim (cut at {slim.cut_point.name if slim.cut_point else '-'})",
    )
    reporter.update("compare", 1.0, "done")
    return result
