"""A deployable model out: a checkpoint written as ONNX, TorchScript or a ``torch.export`` ExportedProgram, checked
against torch on real (or seeded random) images and timed on the CPU in the runtime that will run it.

Every format takes one input, ``images``: float32 ``(batch, 3, S, S)``, RGB scaled to [0, 1], minus the spec's mean
and divided by its std, per channel; and gives one output, ``logits``: float32 ``(batch, classes)``. The batch axis is
dynamic. The file carries what a deployer needs to feed it (``deploy_info``: classes, image size, mean, std, the
layercut spec): as ONNX ``metadata_props`` (the value of each key as JSON text), or as the extra file ``layercut.json`` of a
TorchScript or ExportedProgram archive. The exported files need neither layercut nor, for ONNX, torch.

**Which ONNX exporter, and why.** ``torch.onnx.export(..., dynamo=True)``: the ``torch.export``-based exporter,
which translates the graph with onnxscript (installed with layercut; it works offline, nothing is downloaded). It is
torch's default since 2.9, while the TorchScript-based one (``dynamo=False``) warns that it is deprecated and will be
removed, and cannot export VGG at small input sizes (its ``adaptive_avg_pool2d`` to 7×7 from a 1×1 map). The dynamo
exporter exports every architecture layercut builds (smallcnn, VGG, ResNet, MobileNet, EfficientNet and their slim
models) with a symbolic batch dimension taken from ``dynamic_shapes``, at opset 18 or later.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from layercut.contracts import files
from layercut.contracts.configs import EXPORT_SUFFIXES, ExportConfig, ExportFormat
from layercut.contracts.errors import LayercutError
from layercut.contracts.results import ExportParity, ExportResult, ExportVersions, LatencyMeasurement, LatencyRuntime
from layercut.contracts.spec import ModelSpec
from layercut.stages.checkpoint import load_checkpoint
from layercut.stages.data import Dataset
from layercut.stages.profiling import latency_summary, measure_latency
from layercut.stages.progress import SILENT, Reporter
from layercut.stages.stages import check_dataset_fits, write_result
from layercut.stages.training import normalise

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
EXTRA_FILE = "layercut.json"
"""The extra file of a TorchScript or ExportedProgram archive that holds ``deploy_info`` as one JSON object."""
MAX_BATCH = 4096
"""The largest batch the exported graphs declare (the dynamic axis' upper bound)."""
EXAMPLE_BATCH = 2
"""The batch of the example input the graphs are traced with (2, not 1, so that the batch axis stays symbolic)."""
PARITY_BATCH = 32
"""Images per run of the exported file in the parity check (after a first run of one image)."""
MAX_TIMING_SECONDS = 30.0
"""A latency measurement stops after this many seconds of timed runs (at least 3 runs), whatever its repeats."""
RANDOM_SEED = 0

RUNTIMES: dict[ExportFormat, LatencyRuntime] = {
    "onnx": "onnxruntime",
    "torchscript": "torchscript",
    "exported-program": "exported-program",
}
"""The runtime that runs each format."""

EXPORTERS: dict[ExportFormat, str] = {
    "onnx": "torch.onnx.export (dynamo=True: the torch.export-based exporter, onnxscript translation)",
    "torchscript": "torch.jit.trace, saved with torch.jit.save",
    "exported-program": "torch.export.export, saved with torch.export.save",
}

Runner = Callable[[np.ndarray], np.ndarray]
"""An exported model loaded in its runtime: normalised float32 images in, logits out (numpy both)."""


class ParityError(LayercutError):
    """The exported file's logits differ from torch's by more than the tolerance."""


def default_export_path(checkpoint: str | Path, format: ExportFormat) -> Path:
    """Where an export goes when no file is named: beside the checkpoint, with the format's ending
    (``model.safetensors`` → ``model.onnx``, ``model.ts``, ``model.pt2``)."""
    return Path(checkpoint).with_suffix(EXPORT_SUFFIXES[format])


def runtime_label(runtime: LatencyRuntime, batch: int) -> str:
    """The latency label of a runtime on the CPU: ``onnxruntime_cpu_b32``, ``exported_program_cpu_b1``."""
    return f"{runtime.replace('-', '_')}_cpu_b{batch}"


def deploy_info(spec: ModelSpec) -> dict[str, Any]:
    """What a deployer needs to feed the exported model and read its output."""
    size = spec.image_size
    return {
        "classes": list(spec.classes),
        "image_size": size,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "input": {
            "name": INPUT_NAME,
            "dtype": "float32",
            "shape": ["batch", 3, size, size],
            "preprocessing": "RGB image resized to image_size x image_size, scaled to [0, 1], "
            "minus mean and divided by std per channel",
        },
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", len(spec.classes)]},
        "layercut_spec": spec.model_dump(mode="json", exclude={"data"}),
    }


def flat_metadata(info: dict[str, Any]) -> dict[str, str]:
    """``deploy_info`` as ONNX ``metadata_props``: one string per key, each value as JSON text."""
    return {key: json.dumps(value) for key, value in info.items()}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' console chatter and warnings (the result records what was done)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _example(image_size: int) -> torch.Tensor:
    return torch.zeros(EXAMPLE_BATCH, 3, image_size, image_size)


def _batch_dim() -> dict[int, Any]:
    return {0: torch.export.Dim("batch", min=1, max=MAX_BATCH)}


def _failed(what: str, exc: Exception) -> LayercutError:
    first_line = (str(exc).strip().splitlines() or [""])[0][:300]
    return LayercutError(f"{what} failed: {type(exc).__name__}: {first_line}")


def export_onnx(model: nn.Module, image_size: int, path: Path, metadata: dict[str, str], opset: int | None) -> int:
    """Write ``model`` as ONNX (dynamic batch, ``metadata`` as metadata_props); returns the opset written."""
    import onnx

    try:
        with _quiet():
            program = torch.onnx.export(
                model,
                (_example(image_size),),
                None,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=(_batch_dim(),),
                opset_version=opset,
                dynamo=True,
                verbose=False,
            )
            proto = program.model_proto
    except Exception as exc:  # noqa: BLE001 - any exporter failure is the user's to read, in one line
        raise _failed("torch.onnx.export", exc) from exc
    for key, value in metadata.items():
        entry = next((p for p in proto.metadata_props if p.key == key), None) or proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save_model(proto, str(path))
    return next(int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def export_torchscript(model: nn.Module, image_size: int, path: Path, info: dict[str, Any]) -> None:
    """Write ``model`` traced with ``torch.jit.trace``, ``info`` as the extra file ``layercut.json``."""
    try:
        with _quiet(), torch.no_grad():
            traced = torch.jit.trace(model, _example(image_size), check_trace=False)
            torch.jit.save(traced, str(path), _extra_files={EXTRA_FILE: json.dumps(info)})
    except Exception as exc:  # noqa: BLE001
        raise _failed("torch.jit.trace", exc) from exc


def export_program(model: nn.Module, image_size: int, path: Path, info: dict[str, Any]) -> None:
    """Write ``model`` as a ``torch.export`` ExportedProgram (dynamic batch), ``info`` as the extra file."""
    try:
        with _quiet():
            program = torch.export.export(model, (_example(image_size),), dynamic_shapes=(_batch_dim(),))
            torch.export.save(program, str(path), extra_files={EXTRA_FILE: json.dumps(info)})
    except Exception as exc:  # noqa: BLE001
        raise _failed("torch.export.export", exc) from exc


def onnxruntime_session(path: str | Path, threads: int) -> Any:
    """An ONNX Runtime session on the CPU with ``threads`` intra-op threads (one op at a time)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def load_runner(path: str | Path, format: ExportFormat, threads: int) -> Runner:
    """The exported file loaded in its runtime, as a function of normalised images (numpy float32) to logits."""
    if format == "onnx":
        session = onnxruntime_session(path, threads)
        return lambda images: np.asarray(session.run([OUTPUT_NAME], {INPUT_NAME: images})[0])
    with _quiet():  # torch.jit.load warns that TorchScript is deprecated: the format was asked for by name
        if format == "torchscript":
            module = torch.jit.load(str(path), map_location="cpu")
        else:
            module = torch.export.load(str(path)).module()

    def run(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(images)).numpy()

    return run


def parity_images(spec: ModelSpec, dataset: Dataset | None, count: int) -> tuple[torch.Tensor, str]:
    """Normalised images to compare on: the first ``count`` of the test split, else seeded random images."""
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1)
    if dataset is not None and len(dataset.test) > 0:
        return normalise(dataset.test.images[:count], mean, std), "test split"
    generator = torch.Generator().manual_seed(RANDOM_SEED)
    pixels = torch.randint(0, 256, (count, 3, spec.image_size, spec.image_size), generator=generator, dtype=torch.uint8)
    return normalise(pixels, mean, std), "random"


def check_parity(
    model: nn.Module, runner: Runner, images: torch.Tensor, tolerance: float
) -> tuple[float, float, float, list[int]]:
    """Run the exported file on one image, then on batches of up to ``PARITY_BATCH``, and compare with torch:
    (max |diff|, mean |diff|, share of equal predictions, the batch sizes run)."""
    with torch.inference_mode():
        expected = model(images).float().numpy()
    chunks = [images[:1]] + [images[i : i + PARITY_BATCH] for i in range(1, len(images), PARITY_BATCH)]
    got = np.concatenate([runner(np.ascontiguousarray(chunk.numpy(), dtype=np.float32)) for chunk in chunks])
    if got.shape != expected.shape:
        raise ParityError(f"the exported model gives logits of shape {got.shape}, torch {expected.shape}")
    diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
    same = float((got.argmax(axis=1) == expected.argmax(axis=1)).mean())
    return float(diff.max()), float(diff.mean()), same, sorted({len(chunk) for chunk in chunks})


def time_runner(
    runner: Runner,
    input_shape: tuple[int, int, int, int],
    *,
    warmup: int,
    repeats: int,
    threads: int,
    runtime: LatencyRuntime,
    reporter: Reporter = SILENT,
    stage: str = "export",
    message: str = "",
    max_seconds: float = MAX_TIMING_SECONDS,
) -> LatencyMeasurement:
    """Milliseconds per run of ``runner`` at ``input_shape`` on the CPU after ``warmup`` runs: at most ``repeats``
    timed runs and no more after ``max_seconds`` (at least 3, or ``repeats`` if fewer); a reporter update (and
    cancellation check) before each run."""
    images = np.random.default_rng(RANDOM_SEED).standard_normal(input_shape, dtype=np.float32)
    total = warmup + repeats
    for i in range(warmup):
        reporter.update(stage, i / total, f"{message} (warm-up)")
        runner(images)
    times: list[float] = []
    started = time.perf_counter()
    for i in range(repeats):
        reporter.update(stage, (warmup + i) / total, message)
        begin = time.perf_counter()
        runner(images)
        times.append((time.perf_counter() - begin) * 1000.0)
        if len(times) >= min(3, repeats) and time.perf_counter() - started > max_seconds:
            break
    return LatencyMeasurement.model_validate(
        latency_summary(
            times,
            input_shape,
            device="cpu",
            device_type="cpu",
            threads=threads,
            warmup=warmup,
            runtime=runtime,
        )
    )


def onnxruntime_latency(
    model: nn.Module,
    image_size: int,
    batches: list[int],
    *,
    warmup: int,
    repeats: int,
    threads: int | None = None,
    reporter: Reporter = SILENT,
    stage: str = "compare",
    label: str = "",
) -> dict[str, LatencyMeasurement]:
    """ONNX Runtime CPU latency of ``model`` at each batch size (``onnxruntime_cpu_b1`` …): exported to a temporary
    ONNX file, timed as ``time_runner`` times, the file removed afterwards."""
    import tempfile

    threads = threads or torch.get_num_threads()
    latency: dict[str, LatencyMeasurement] = {}
    with tempfile.TemporaryDirectory(prefix="layercut-onnx-") as folder:
        path = Path(folder) / "model.onnx"
        reporter.update(stage, 0.0, f"exporting {label} to ONNX".replace("  ", " "))
        export_onnx(model.cpu().eval(), image_size, path, {}, None)
        runner = load_runner(path, "onnx", threads)
        for step, batch in enumerate(batches):
            latency[runtime_label("onnxruntime", batch)] = time_runner(
                runner,
                (batch, 3, image_size, image_size),
                warmup=warmup,
                repeats=repeats,
                threads=threads,
                runtime="onnxruntime",
                reporter=reporter.scaled(step / len(batches), (step + 1) / len(batches)),
                stage=stage,
                message=f"timing {label} in ONNX Runtime at batch {batch}".replace("  ", " "),
            )
    return latency


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _versions(format: ExportFormat) -> ExportVersions:
    if format != "onnx":
        return ExportVersions(torch=torch.__version__)
    import onnx
    import onnxruntime
    import onnxscript

    return ExportVersions(
        torch=torch.__version__,
        onnx=onnx.__version__,
        onnxscript=onnxscript.__version__,
        onnxruntime=onnxruntime.__version__,
    )


def write_export(
    model: nn.Module, spec: ModelSpec, format: ExportFormat, path: Path, opset: int | None = None
) -> tuple[int | None, dict[str, str]]:
    """Write the exported file (through a temporary file, so a failed export leaves nothing at ``path``); returns the
    ONNX opset (None for the other formats) and the metadata the file carries."""
    info = deploy_info(spec)
    metadata = flat_metadata(info)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.tmp{path.suffix}")  # torch.export.save wants the .pt2 ending
    written_opset = None
    try:
        if format == "onnx":
            written_opset = export_onnx(model, spec.image_size, tmp, metadata, opset)
        elif format == "torchscript":
            export_torchscript(model, spec.image_size, tmp, info)
        else:
            export_program(model, spec.image_size, tmp, info)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return written_opset, metadata


def export_stage(
    checkpoint_path: str | Path,
    out_path: str | Path,
    config: ExportConfig,
    dataset: Dataset | None = None,
    reporter: Reporter = SILENT,
) -> ExportResult:
    """Export a checkpoint to ``out_path`` in ``config.format``, check the file's logits against torch's (on the first
    test images of ``dataset``, else on seeded random images) and time it on the CPU beside torch; writes export.json
    beside the file. A file whose logits differ by more than ``config.tolerance`` is removed and is an error."""
    started = time.perf_counter()
    out_path = Path(out_path)
    fmt = config.format
    if out_path.is_dir():
        raise LayercutError(f"--out {out_path} is a folder; name the file to write (e.g. model{EXPORT_SUFFIXES[fmt]})")
    reporter.update("export", 0.0, "loading the checkpoint")
    model, spec = load_checkpoint(checkpoint_path)
    if dataset is not None:
        check_dataset_fits(spec, dataset)
    threads = config.threads or torch.get_num_threads()

    reporter.update("export", 0.05, f"exporting to {fmt}")
    opset, metadata = write_export(model, spec, fmt, out_path, config.opset)

    reporter.update("export", 0.35, f"checking {fmt} against torch")
    images, images_from = parity_images(spec, dataset, config.parity_images)
    runner = load_runner(out_path, fmt, threads)
    original_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        max_diff, mean_diff, same, batch_sizes = check_parity(model, runner, images, config.tolerance)
        if not max_diff <= config.tolerance:  # a NaN is a failure too
            out_path.unlink(missing_ok=True)
            raise ParityError(
                f"the {fmt} export of {checkpoint_path} differs from torch by up to {max_diff:.3g} in the logits on "
                f"{len(images)} {images_from} images, more than the tolerance {config.tolerance:g}; the file was "
                "removed (raise --tolerance to keep a looser export)"
            )

        runtime = RUNTIMES[fmt]
        latency: dict[str, LatencyMeasurement] = {}
        runs = [(which, batch) for batch in config.latency_batches for which in ("torch", runtime)]
        for step, (which, batch) in enumerate(runs):
            shape = (batch, 3, spec.image_size, spec.image_size)
            part = reporter.scaled(0.45 + 0.55 * step / len(runs), 0.45 + 0.55 * (step + 1) / len(runs))
            part.update("export", 0.0, f"timing {which} at batch {batch}")
            if which == "torch":
                latency[f"cpu_b{batch}"] = LatencyMeasurement.model_validate(
                    measure_latency(
                        model,
                        shape,
                        device="cpu",
                        warmup=config.latency_warmup,
                        repeats=config.latency_repeats,
                        threads=threads,
                        before_each=functools.partial(part.check, "export"),
                    )
                )
            else:
                latency[runtime_label(runtime, batch)] = time_runner(
                    runner,
                    shape,
                    warmup=config.latency_warmup,
                    repeats=config.latency_repeats,
                    threads=threads,
                    runtime=runtime,
                    reporter=part,
                    message=f"timing {runtime} at batch {batch}",
                )
    finally:
        torch.set_num_threads(original_threads)

    size = spec.image_size
    result = ExportResult(
        stage="export",
        checkpoint=str(checkpoint_path),
        architecture=spec.architecture,
        cut_point=spec.cut_point,
        format=fmt,
        file=str(out_path),
        bytes=out_path.stat().st_size,
        sha256=_sha256(out_path),
        exporter=EXPORTERS[fmt],
        opset=opset,
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        input_shape=["batch", 3, size, size],
        classes=list(spec.classes),
        image_size=size,
        mean=list(spec.mean),
        std=list(spec.std),
        metadata=metadata,
        parity=ExportParity(
            max_abs_diff=max_diff,
            mean_abs_diff=mean_diff,
            tolerance=config.tolerance,
            images=len(images),
            images_from=images_from,
            same_predictions=same,
            batch_sizes=batch_sizes,
        ),
        latency=latency,
        threads=threads,
        versions=_versions(fmt),
        seconds=time.perf_counter() - started,
        config=config,
    )
    write_result(out_path.parent / files.EXPORT_JSON, result)
    reporter.update("export", 1.0, "done")
    return result
