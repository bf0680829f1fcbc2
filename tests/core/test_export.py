"""Export: ONNX (ONNX Runtime), TorchScript and ExportedProgram files give torch's logits, at any batch size, carry
what a deployer needs, run without layercut (ONNX without torch), and a file that does not match is an error."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from layercut.contracts import files
from layercut.contracts.configs import CompareConfig, ExportConfig
from layercut.contracts.errors import Cancelled, LayercutError
from layercut.contracts.results import CompareResult, ExportResult, LatencyMeasurement
from layercut.contracts.spec import CutPointRef, ModelSpec
from layercut.report.formats import latency_label
from layercut.stages import export as export_module
from layercut.stages import stages
from layercut.stages.architectures import build_model
from layercut.stages.checkpoint import load_checkpoint, save_checkpoint
from layercut.stages.cutpoints import resolve_cut_point
from layercut.stages.data import Dataset
from layercut.stages.data.types import Split
from layercut.stages.export import EXTRA_FILE, ParityError, default_export_path, export_stage, time_runner
from layercut.stages.profiling import measure_latency
from layercut.stages.progress import Reporter
from layercut.stages.truncation import truncate
from layercut.testing.nets import seeded

CLASSES = ["a", "b", "c"]
SIZE = 32
# One timed run of batch 1: these tests check what is recorded, not how fast.
QUICK = {"latency_batches": [1], "latency_repeats": 1, "latency_warmup": 0, "parity_images": 5, "threads": 1}


def _checkpoint(folder: Path, arch: str, cut: str | None = None) -> Path:
    model = seeded(build_model(arch, len(CLASSES)))
    spec = ModelSpec(architecture=arch, classes=CLASSES, image_size=SIZE, mean=[0.5, 0.4, 0.3], std=[0.25, 0.2, 0.3])
    if cut is not None:
        point = resolve_cut_point(model, cut)
        model = seeded(truncate(model, point, len(CLASSES), image_size=SIZE), seed=1)
        spec = spec.model_copy(update={"cut_point": CutPointRef(index=point.index, name=point.name)})
    return save_checkpoint(model, spec, folder / "model.safetensors")


@pytest.fixture(scope="module")
def smallcnn(tmp_path_factory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("smallcnn"), "smallcnn")


def _images(n: int, seed: int = 3) -> np.ndarray:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)).numpy()


def _torch_logits(checkpoint: Path, images: np.ndarray) -> np.ndarray:
    model, _ = load_checkpoint(checkpoint)
    with torch.inference_mode():
        return model(torch.from_numpy(images)).numpy()


@pytest.mark.parametrize(("arch", "cut"), [("smallcnn", None), ("resnet18", None), ("resnet18", "layer2.1")])
def test_onnx_matches_torch_at_any_batch_and_carries_the_preprocessing(tmp_path, arch, cut) -> None:
    checkpoint = _checkpoint(tmp_path, arch, cut)
    out = tmp_path / "deploy" / "model.onnx"
    result = export_stage(checkpoint, out, ExportConfig(**QUICK))

    assert result.parity.max_abs_diff <= 1e-4 and result.parity.same_predictions == 1.0
    assert result.parity.images == 5 and result.parity.images_from == "random" and 1 in result.parity.batch_sizes
    assert result.opset is not None and result.opset >= 18
    assert (result.cut_point and result.cut_point.name) == cut and result.architecture == arch
    assert set(result.latency) == {"cpu_b1", "onnxruntime_cpu_b1"}
    assert result.latency["onnxruntime_cpu_b1"].runtime == "onnxruntime" and result.latency["cpu_b1"].runtime is None
    assert result.versions.onnxruntime == ort.__version__ and result.versions.onnx == onnx.__version__
    # export.json beside the file is the result, and the checksum is the file's
    assert ExportResult.model_validate_json((out.parent / files.EXPORT_JSON).read_text()) == result
    assert result.sha256 == hashlib.sha256(out.read_bytes()).hexdigest() and result.bytes == out.stat().st_size

    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["classes"]) == CLASSES and json.loads(meta["image_size"]) == SIZE
    assert json.loads(meta["mean"]) == [0.5, 0.4, 0.3] and json.loads(meta["std"]) == [0.25, 0.2, 0.3]
    assert json.loads(meta["layercut_spec"])["architecture"] == arch
    (graph_input,) = proto.graph.input
    assert graph_input.name == "images" and graph_input.type.tensor_type.shape.dim[0].dim_param
    assert [o.name for o in proto.graph.output] == ["logits"]

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        images = _images(batch)
        (logits,) = session.run(None, {"images": images})
        assert logits.shape == (batch, len(CLASSES))
        np.testing.assert_allclose(logits, _torch_logits(checkpoint, images), rtol=0, atol=1e-4)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize(("fmt", "runtime"), [("torchscript", "torchscript"), ("exported-program", "exported_program")])
def test_torchscript_and_exported_program_match_torch_with_the_spec_inside(tmp_path, smallcnn, fmt, runtime) -> None:
    out = default_export_path(tmp_path / "model.safetensors", fmt)
    result = export_stage(smallcnn, out, ExportConfig(format=fmt, **QUICK))
    assert out.suffix == {"torchscript": ".ts", "exported-program": ".pt2"}[fmt] and out.is_file()
    assert result.parity.max_abs_diff <= 1e-4 and result.opset is None
    assert set(result.latency) == {"cpu_b1", f"{runtime}_cpu_b1"}

    extra = {EXTRA_FILE: ""}
    if fmt == "torchscript":
        module = torch.jit.load(str(out), _extra_files=extra)
    else:
        module = torch.export.load(str(out), extra_files=extra).module()
    info = json.loads(extra[EXTRA_FILE])
    assert info["classes"] == CLASSES and info["image_size"] == SIZE and info["input"]["name"] == "images"
    for batch in (1, 5):
        images = _images(batch)
        with torch.inference_mode():
            got = module(torch.from_numpy(images)).numpy()
        np.testing.assert_allclose(got, _torch_logits(smallcnn, images), rtol=0, atol=1e-4)


def test_a_file_beyond_the_tolerance_is_removed_and_the_error_says_by_how_much(tmp_path, smallcnn, monkeypatch) -> None:
    real = export_module.load_runner

    def perturbed(path, format, threads):
        runner = real(path, format, threads)
        return lambda images: runner(images) + 1e-3

    monkeypatch.setattr(export_module, "load_runner", perturbed)
    out = tmp_path / "model.onnx"
    with pytest.raises(ParityError, match=r"differs from torch by up to 0\.001.* more than the tolerance 0\.0001"):
        export_stage(smallcnn, out, ExportConfig(**QUICK))
    assert not out.exists() and not (tmp_path / files.EXPORT_JSON).exists()
    # a looser tolerance accepts the same file
    result = export_stage(smallcnn, out, ExportConfig(**{**QUICK, "tolerance": 1e-2}))
    assert 5e-4 < result.parity.max_abs_diff <= 1e-2 and out.is_file()


def _split(n: int, seed: int) -> Split:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, SIZE, SIZE), generator=gen, dtype=torch.uint8)
    return Split(images=images, labels=torch.arange(n) % len(CLASSES), sources=[f"{seed}/{i}" for i in range(n)])


def test_parity_is_checked_on_the_test_split_of_a_dataset_that_fits(tmp_path, smallcnn) -> None:
    data = Dataset("tiny", list(CLASSES), _split(6, 0), _split(3, 1), _split(4, 2), SIZE, 3)
    result = export_stage(smallcnn, tmp_path / "model.ts", ExportConfig(format="torchscript", **QUICK), data)
    assert result.parity.images_from == "test split" and result.parity.images == 4
    wrong = Dataset("tiny", ["x", "y", "z"], _split(6, 0), _split(3, 1), _split(4, 2), SIZE, 3)
    with pytest.raises(LayercutError, match="trained on classes"):
        export_stage(smallcnn, tmp_path / "other.ts", ExportConfig(format="torchscript", **QUICK), wrong)


def _child(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args], capture_output=True, text=True, timeout=120
    )


def test_the_onnx_file_runs_with_only_onnxruntime_and_numpy(tmp_path, smallcnn) -> None:
    out = tmp_path / "model.onnx"
    export_stage(smallcnn, out, ExportConfig(**QUICK))
    images = _images(5)
    np.save(tmp_path / "images.npy", images)
    child = _child(
        """
        import sys
        sys.modules["layercut"] = None  # neither layercut nor torch can be imported here
        sys.modules["torch"] = None
        import json
        import numpy as np
        import onnxruntime as ort

        session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
        meta = session.get_modelmeta().custom_metadata_map
        images = np.load(sys.argv[2])
        logits = np.concatenate([session.run(["logits"], {"images": images[:1]})[0], session.run(None, {"images": images[1:]})[0]])
        np.save(sys.argv[3], logits)
        print(json.dumps(json.loads(meta["classes"])))
        """,
        str(out),
        str(tmp_path / "images.npy"),
        str(tmp_path / "logits.npy"),
    )
    assert child.returncode == 0, child.stderr
    assert json.loads(child.stdout) == CLASSES
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), _torch_logits(smallcnn, images), rtol=0, atol=1e-4)


@pytest.mark.parametrize("fmt", ["torchscript", "exported-program"])
def test_torch_files_load_without_layercut(tmp_path, smallcnn, fmt) -> None:
    out = default_export_path(tmp_path / "model.safetensors", fmt)
    export_stage(smallcnn, out, ExportConfig(format=fmt, **QUICK))
    images = _images(5)
    np.save(tmp_path / "images.npy", images)
    child = _child(
        """
        import sys
        sys.modules["layercut"] = None  # layercut cannot be imported here
        import json
        import numpy as np
        import torch

        path, fmt = sys.argv[1], sys.argv[2]
        extra = {"layercut.json": ""}
        if fmt == "torchscript":
            module = torch.jit.load(path, _extra_files=extra)
        else:
            module = torch.export.load(path, extra_files=extra).module()
        with torch.inference_mode():
            logits = module(torch.from_numpy(np.load(sys.argv[3]))).numpy()
        np.save(sys.argv[4], logits)
        print(json.dumps(json.loads(extra["layercut.json"])["classes"]))
        """,
        str(out),
        fmt,
        str(tmp_path / "images.npy"),
        str(tmp_path / "logits.npy"),
    )
    assert child.returncode == 0, child.stderr
    assert json.loads(child.stdout.strip().splitlines()[-1]) == CLASSES
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), _torch_logits(smallcnn, images), rtol=0, atol=1e-4)


def test_an_exporter_failure_or_a_folder_is_one_clear_error(tmp_path, smallcnn, monkeypatch) -> None:
    with pytest.raises(LayercutError, match="is a folder"):
        export_stage(smallcnn, tmp_path, ExportConfig(**QUICK))

    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operator aten::magic\nlong traceback text")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(
        LayercutError, match=r"^torch.onnx.export failed: RuntimeError: unsupported operator aten::magic$"
    ):
        export_stage(smallcnn, tmp_path / "model.onnx", ExportConfig(**QUICK))
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_timing_is_bounded_and_cancellable() -> None:
    calls = []

    def runner(images: np.ndarray) -> np.ndarray:
        calls.append(images.shape)
        return images

    measured = time_runner(runner, (2, 3, 4, 4), warmup=1, repeats=50, threads=1, runtime="onnxruntime", max_seconds=0)
    assert isinstance(measured, LatencyMeasurement) and measured.repeats == 3 and len(calls) == 1 + 3
    assert measured.batch_size == 2 and measured.runtime == "onnxruntime" and measured.device_type == "cpu"

    stop = Reporter(should_cancel=lambda: len(calls) >= 6)
    with pytest.raises(Cancelled):
        time_runner(runner, (2, 3, 4, 4), warmup=0, repeats=50, threads=1, runtime="onnxruntime", reporter=stop)
    assert len(calls) == 6


def test_compare_times_onnxruntime_beside_torch_and_goes_on_without_it(tmp_path, smallcnn, monkeypatch) -> None:
    model, spec = load_checkpoint(smallcnn)
    config = CompareConfig(device="cpu", latency_batches=[1, 3], latency_repeats=1, latency_warmup=0)
    torch_latency = {"cpu_b1": LatencyMeasurement.model_validate(measure_latency(model, (1, 3, SIZE, SIZE)))}
    latency, error = stages._with_onnxruntime(torch_latency, model, spec, config, Reporter(), "base")
    assert error is None and list(latency) == ["cpu_b1", "onnxruntime_cpu_b1", "onnxruntime_cpu_b3"]
    assert latency["onnxruntime_cpu_b3"].batch_size == 3 and latency["onnxruntime_cpu_b3"].runtime == "onnxruntime"
    assert (
        latency_label("onnxruntime_cpu_b3") == "ONNX Runtime CPU, batch 3" and latency_label("cpu_b1") == "CPU, batch 1"
    )

    def broken(*args, **kwargs):
        raise LayercutError("torch.onnx.export failed: no")

    monkeypatch.setattr(export_module, "export_onnx", broken)
    latency, error = stages._with_onnxruntime(torch_latency, model, spec, config, Reporter(), "base")
    assert list(latency) == ["cpu_b1"] and error == "LayercutError: torch.onnx.export failed: no"
    assert "onnxruntime_error" in CompareResult.model_fields["base"].annotation.model_fields


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_the_python_api_writes_beside_the_checkpoint(tmp_path) -> None:
    import layercut as lc

    checkpoint = _checkpoint(tmp_path, "smallcnn")
    result = lc.export(checkpoint, format="torchscript", progress=False, **QUICK)
    assert isinstance(result, ExportResult) and Path(result.file) == checkpoint.with_suffix(".ts")
    assert (tmp_path / files.EXPORT_JSON).is_file() and result.parity.max_abs_diff <= 1e-4
