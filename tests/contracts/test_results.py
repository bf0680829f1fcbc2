"""The result models describe exactly what the stages produce: each stage of a real tiny pipeline returns its
result model, its JSON file validates (unknown keys are errors), and dumping the returned model or the model read
from the file gives back the file's JSON, value for value and type for type, so reading a result loses nothing."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pytest
from PIL import Image
from pydantic import BaseModel, ValidationError

from layercut.contracts import files, results
from layercut.contracts.configs import (
    AnalyzeConfig,
    CompareConfig,
    DataConfig,
    ExplainConfig,
    SweepConfig,
    TrainConfig,
)
from layercut.contracts.kinds import STAGE_KINDS
from layercut.contracts.results import (
    RESULT_MODELS,
    STAGE_RESULT,
    TRAINING_RESULT,
    AnalyzeResult,
    CompareResult,
    DataInfo,
    ExplainResult,
    RetrainResult,
    RunSummary,
    SelectResult,
    SweepResult,
    TrainResult,
    TruncateResult,
)

RUN_FILES: dict[str, tuple[str, type[BaseModel]]] = {
    "train": (f"base/{files.METRICS_JSON}", TrainResult),
    "analyze": (f"analysis/{files.ANALYSIS_JSON}", AnalyzeResult),
    "truncate": (f"slim/{files.TRUNCATE_JSON}", TruncateResult),
    "retrain": (f"slim/{files.METRICS_JSON}", RetrainResult),
    "select": (f"select/{files.SELECT_JSON}", SelectResult),
    "sweep": (f"sweep/{files.SWEEP_JSON}", SweepResult),
    "compare": (f"compare/{files.COMPARE_JSON}", CompareResult),
    "explain": (f"explain/{files.EXPLAIN_JSON}", ExplainResult),
}
"""Where a run folder keeps each stage's result, and the model that reads it (under the auto cut, slim/ holds the
truncate.json and metrics.json of the chosen candidate, written by the select step)."""


def assert_same_json(got: Any, want: Any, where: str = "$") -> None:
    """``got`` equals ``want`` key for key and value for value, with the same JSON types (1 is not 1.0, nor True)."""
    if isinstance(want, dict):
        assert isinstance(got, dict), f"{where}: {type(got).__name__} instead of an object"
        assert set(got) == set(want), (
            f"{where}: keys differ: missing {sorted(set(want) - set(got))}, extra {sorted(set(got) - set(want))}"
        )
        for key in want:
            assert_same_json(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list), f"{where}: {type(got).__name__} instead of an array"
        assert len(got) == len(want), f"{where}: {len(got)} items instead of {len(want)}"
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same_json(g, w, f"{where}[{i}]")
    else:
        assert type(got) is type(want), f"{where}: {got!r} ({type(got).__name__}) vs {want!r} ({type(want).__name__})"
        both_nan = isinstance(want, float) and math.isnan(want) and math.isnan(got)
        assert both_nan or got == want, f"{where}: {got!r} != {want!r}"


def non_json_values(value: Any, where: str = "$") -> list[str]:
    """Where ``value`` holds something other than dict/list/str/int/float/bool/None (a tuple, a Path, numpy …)."""
    if isinstance(value, dict):
        found = [f"{where}: key {k!r}" for k in value if not isinstance(k, str)]
        return found + [p for k, v in value.items() for p in non_json_values(v, f"{where}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in non_json_values(v, f"{where}[{i}]")]
    if value is None or type(value) in (str, int, float, bool):
        return []
    return [f"{where}: {type(value).__module__}.{type(value).__qualname__}"]


def check_exact(model: type[BaseModel], produced: BaseModel | None, path: Path) -> BaseModel:
    """The stage returned ``model``, the file validates, and each dumps back to the file's JSON."""
    text = path.read_text()
    written = json.loads(text)
    from_file = model.model_validate_json(text)
    assert_same_json(from_file.model_dump(mode="json"), written)
    if produced is not None:
        assert type(produced) is model, f"returned a {type(produced).__name__}, not a {model.__name__}"
        assert_same_json(produced.model_dump(mode="json"), written)
        assert produced == from_file
    return from_file


def _folder_dataset(root: Path, pre_split: bool = False, per_class: int = 10) -> Path:
    """Two classes of 32 px PNGs in class folders (inside train/ and test/ when ``pre_split``), and one non-image."""
    rng = np.random.default_rng(0)
    for split in ("train", "test") if pre_split else ("",):
        for label, name in enumerate(("cat", "dog")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 90, (32, 32, 3)) + label * 140
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, BaseModel], RunSummary]:
    """One real pipeline (a 24-image folder at 32 px, smallcnn, 1 epoch, CPU, the default auto cut and a sweep of two
    cut points): its folder, what each stage returned, and run.json's summary."""
    from layercut import local

    tmp = tmp_path_factory.mktemp("results")
    data = _folder_dataset(tmp / "data", per_class=12)
    out = tmp / "run"
    returned: dict[str, BaseModel] = {}

    def recording(kind: str, runner: Any) -> Any:
        def run_step(state: Any, step: Any) -> BaseModel:
            returned[kind] = runner(state, step)
            return returned[kind]

        return run_step

    with pytest.MonkeyPatch.context() as patch:
        for kind, runner in list(local.STEP_RUNNERS.items()):
            patch.setitem(local.STEP_RUNNERS, kind, recording(kind, runner))
        summary = local.run_pipeline(
            DataConfig(source=str(data), image_size=32),
            "smallcnn",
            out,
            train=TrainConfig(epochs=1, batch_size=8, device="cpu"),
            analyze=AnalyzeConfig(probes_per_class=1, device="cpu"),
            compare=CompareConfig(device="cpu", latency_batches=[1], latency_repeats=1, latency_warmup=0),
            explain=ExplainConfig(images=2, methods=["gradcam", "saliency"], feature_maps=1, device="cpu"),
            sweep=SweepConfig(cuts="0,-1"),
        )
    return out, returned, summary


def test_every_stage_kind_has_its_result_model() -> None:
    assert set(RESULT_MODELS) == set(STAGE_KINDS)
    for kind, model in RESULT_MODELS.items():
        assert get_args(model.model_fields["stage"].annotation) == (kind,)


def test_every_model_forbids_unknown_keys_says_what_it_is_and_has_a_json_schema() -> None:
    models = [
        v
        for v in vars(results).values()
        if isinstance(v, type) and issubclass(v, BaseModel) and v.__module__ == results.__name__
    ]
    assert len(models) > 40
    for model in models:
        assert model.model_config.get("extra") == "forbid", model.__name__
        assert model.__doc__ and model.__doc__.strip(), model.__name__
    for mode in ("validation", "serialization"):
        assert set(STAGE_RESULT.json_schema(mode=mode)["discriminator"]["mapping"]) == set(STAGE_KINDS)
        assert RunSummary.model_json_schema(mode=mode)["additionalProperties"] is False


@pytest.mark.parametrize("kind", list(RUN_FILES))
def test_each_stage_result_and_its_file_are_described_exactly(run, kind: str) -> None:
    out, returned, _ = run
    name, model = RUN_FILES[kind]
    parsed = check_exact(model, returned.get(kind), out / name)
    assert type(STAGE_RESULT.validate_json((out / name).read_text())) is model
    if kind in ("train", "retrain"):
        assert type(TRAINING_RESULT.validate_json((out / name).read_text())) is model
    produced = returned.get(kind, parsed)  # truncate and retrain ran inside select, which returned its own result
    assert isinstance(produced, model), f"the {kind} step returned a {type(produced).__name__}"
    dumped = produced.model_dump(mode="json")
    assert non_json_values(dumped) == [], f"the {kind} stage returns values that are not plain JSON"
    assert parsed.model_dump(mode="json")["stage"] == kind


def test_run_json_is_described_exactly(run) -> None:
    out, _, summary = run
    parsed = check_exact(RunSummary, summary, out / files.RUN_JSON)
    assert isinstance(parsed, RunSummary) and isinstance(summary, RunSummary)
    assert parsed.cut_point.chosen_by == "auto" and parsed.explain.layers.keys() == {"base", "slim"}
    assert parsed.selection is not None and parsed.rules is not None and parsed.verdict
    assert parsed.cut_point.index == parsed.rules.auto.index  # the run's cut is the auto rule's choice
    assert non_json_values(summary.model_dump(mode="json")) == []


def test_the_typed_fields_read_what_the_readers_read_by_key(run) -> None:
    out, returned, _ = run
    compare = returned["compare"]
    assert isinstance(compare, CompareResult)
    dumped = compare.model_dump(mode="json")
    assert compare.comparison.metrics.params.slim == dumped["comparison"]["metrics"]["params"]["slim"]
    assert set(compare.base.latency) == {"cpu_b1", "onnxruntime_cpu_b1"}  # torch's, and ONNX Runtime's beside it
    assert compare.base.latency["onnxruntime_cpu_b1"].runtime == "onnxruntime"
    assert compare.base.onnxruntime_error is None
    train = returned["train"]
    assert isinstance(train, TrainResult)
    assert train.test.per_class.keys() == set(train.classes)
    assert train.data.kind == "class-folders" and train.data.ignored is not None
    explained = returned["explain"]
    assert isinstance(explained, ExplainResult)
    assert (
        explained.models["slim"].predictions[0].class_
        == explained.model_dump(mode="json")["models"]["slim"]["predictions"][0]["class"]
    )
    analysis = returned["analyze"]
    assert isinstance(analysis, AnalyzeResult)
    assert analysis.knee.found == analysis.knee_found and analysis.cut_point.index == analysis.knee.index


def test_one_model_explained_for_a_class_index(run, tmp_path: Path) -> None:
    """explain without a second model: no agreement, one model; an int target; no feature maps asked for."""
    import layercut as lc

    out, _, _ = run
    data = lc.load_data(str(out.parent / "data"), image_size=32)
    config = dict(images=2, methods=["gradcam", "guided_backprop"], target=1, feature_maps=0, device="cpu")
    produced = lc.explain(out / "base" / files.CHECKPOINT, data, tmp_path, **config)
    parsed = check_exact(ExplainResult, produced, tmp_path / files.EXPLAIN_JSON)
    assert isinstance(parsed, ExplainResult)
    assert parsed.agreement is None and set(parsed.models) == {"base"} and parsed.target == 1
    assert parsed.models["base"].feature_maps.channels == []


@pytest.mark.parametrize("pre_split", [False, True], ids=["class-folders", "pre-split"])
def test_a_folder_dataset_info_is_described_exactly(tmp_path: Path, pre_split: bool) -> None:
    import layercut as lc

    data = lc.load_data(str(_folder_dataset(tmp_path / "data", pre_split)), image_size=32)
    info = DataInfo.model_validate(data.info)
    assert_same_json(info.model_dump(mode="json"), json.loads(json.dumps(data.info)))
    assert info.kind == ("pre-split (class-folders)" if pre_split else "class-folders")
    assert info.ignored is not None and info.ignored.count == 1
    assert info.split.method == ("given+carved" if pre_split else "seeded-stratified")


@pytest.mark.parametrize("source", ["textures", "digits"])
def test_the_builtin_data_info_is_described_exactly(source: str) -> None:
    import layercut as lc

    data = lc.load_data(source, image_size=32)
    info = DataInfo.model_validate(data.info)
    assert_same_json(info.model_dump(mode="json"), json.loads(json.dumps(data.info)))
    assert info.kind == "builtin" and (info.textures is not None) == (source == "textures")
    assert (info.origin is not None) == (source == "digits")


def test_an_unknown_or_missing_key_is_an_error(run) -> None:
    out, returned, _ = run
    truncated = json.loads((out / "slim" / files.TRUNCATE_JSON).read_text())
    with pytest.raises(ValidationError, match="extra_forbidden"):
        TruncateResult.model_validate({**truncated, "surprise": 1})
    with pytest.raises(ValidationError, match="missing"):
        TruncateResult.model_validate({k: v for k, v in truncated.items() if k != "chosen_by"})
    metrics = json.loads((out / "base" / files.METRICS_JSON).read_text())
    metrics["test"]["per_class"][metrics["classes"][0]]["auc"] = 0.5
    with pytest.raises(ValidationError, match="extra_forbidden"):
        TrainResult.model_validate(metrics)


def _idx_file(path: Path, array: np.ndarray) -> None:
    """An uncompressed MNIST idx file of uint8 ``array`` (what torchvision's MNIST reads from MNIST/raw/)."""
    header = np.array([0x0800 + array.ndim, *array.shape], dtype=">i4").tobytes()
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_a_torchvision_dataset_info_is_described_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tiny fake MNIST in its torchvision folder layout (nothing is downloaded)."""
    import layercut as lc

    monkeypatch.setenv("LAYERCUT_NO_DOWNLOAD", "1")
    raw = tmp_path / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, per_class in (("train", 4), ("t10k", 1)):
        labels = np.repeat(np.arange(10), per_class)
        _idx_file(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (len(labels), 28, 28)))
        _idx_file(raw / f"{prefix}-labels-idx1-ubyte", labels)
    data = lc.load_data("mnist", image_size=32, data_root=str(tmp_path))
    info = DataInfo.model_validate(data.info)
    assert_same_json(info.model_dump(mode="json"), json.loads(json.dumps(data.info)))
    assert info.kind == "torchvision" and info.folder is not None and info.split.note is not None


def _refuse_constant(name: str) -> Any:
    """A strict JSON parser's answer to NaN, Infinity and -Infinity, which JSON does not have."""
    raise ValueError(f"{name} is not JSON")


def test_a_diverging_training_writes_strict_json(tmp_path: Path) -> None:
    """A learning rate that makes the loss NaN: the returned model keeps NaN, metrics.json says null."""
    import layercut as lc

    data = lc.load_data("textures", image_size=32)
    result = lc.train(data, "smallcnn", tmp_path, epochs=1, lr=1e6, device="cpu")
    assert isinstance(result, TrainResult)
    assert result.history[0].train_loss is not None and math.isnan(result.history[0].train_loss)
    text = (tmp_path / files.METRICS_JSON).read_text()
    written = json.loads(text, parse_constant=_refuse_constant)
    assert written["history"][0]["train_loss"] is None and written["history"][0]["val_loss"] is None
    assert TRAINING_RESULT.validate_json(text).history[0].train_loss is None
