"""layercut in this process: every stage as a function on ``nn.Module``s and files, and the whole pipeline.

This is the Python API that ``import layercut`` exposes (see ``layercut/__init__.py``):

    import layercut as lc
    data = lc.load_data("textures", image_size=64)
    base = lc.train(data, "vgg11", "out/base", epochs=4)
    analysis = lc.analyze("out/base/model.safetensors", data, "out/analysis")
    shown = lc.explain("out/base/model.safetensors", data, "out/explain", compare_with="out/slim/model.safetensors")
    model, spec = lc.load_model("out/base/model.safetensors")
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from layercut.contracts.configs import (
    AnalyzeConfig,
    CompareConfig,
    DataConfig,
    ExplainConfig,
    TrainConfig,
    TruncateConfig,
)
from layercut.report import write_run_report
from layercut.stages import stages
from layercut.stages.checkpoint import ModelSpec, load_checkpoint
from layercut.stages.data import Dataset
from layercut.stages.explain import JSON_NAME as EXPLAIN_JSON
from layercut.stages.explain import explain_stage
from layercut.stages.progress import SILENT, Reporter
from layercut.stages.stages import (
    CHECKPOINT_NAME,
    analyze_stage,
    compare_stage,
    retrain_stage,
    train_stage,
    truncate_stage,
    write_json,
)
from layercut.stages.stages import (
    load_data as load_stage_data,
)

__all__ = ["load_model", "load_data", "train", "analyze", "truncate", "retrain", "compare", "explain", "run"]


def load_model(checkpoint: str | Path, device: str = "cpu") -> tuple[nn.Module, ModelSpec]:
    """A checkpoint as an eval-mode ``nn.Module`` plus its spec (classes, input size, mean/std)."""
    return load_checkpoint(checkpoint, device)


def load_data(source: str = "textures", image_size: int = 64, **options) -> Dataset:
    """Decode a dataset once (options: the fields of ``DataConfig``, e.g. seed, classes)."""
    config = DataConfig(source=source, image_size=image_size, **options)
    dataset = stages.load_data(config)
    dataset.info["data_config"] = config.model_dump()  # so train() records exactly how it was loaded
    return dataset


def train(
    dataset: Dataset, arch: str, out_dir: str | Path, pretrained: bool = False, reporter: Reporter = SILENT, **options
) -> dict:
    """Train a base model (options: the fields of ``TrainConfig``, e.g. epochs, lr)."""
    data_config = (
        DataConfig.model_validate(dataset.info["data_config"])
        if "data_config" in dataset.info
        else DataConfig(source=str(dataset.info.get("source", "custom")), image_size=dataset.image_size)
    )
    return stages.train_stage(dataset, data_config, arch, TrainConfig(**options), out_dir, pretrained, reporter)


def analyze(
    checkpoint: str | Path, dataset: Dataset, out_dir: str | Path, reporter: Reporter = SILENT, **options
) -> dict:
    """GBP maps, SSIM matrix, curves and knee (options: the fields of ``AnalyzeConfig``)."""
    return stages.analyze_stage(checkpoint, dataset, AnalyzeConfig(**options), out_dir, reporter)


def truncate(
    checkpoint: str | Path,
    out_path: str | Path,
    cut: str | int = "knee",
    analysis: str | Path | None = None,
    dropout: float = 0.2,
) -> dict:
    """Cut a base model at the knee of ``analysis`` (its analysis.json) or at a named/indexed cut point."""
    return stages.truncate_stage(checkpoint, TruncateConfig(cut=str(cut), dropout=dropout), out_path, analysis)


def retrain(
    checkpoint: str | Path,
    dataset: Dataset,
    out_dir: str | Path,
    from_scratch: bool = False,
    reporter: Reporter = SILENT,
    **options,
) -> dict:
    """Fine-tune (or train from scratch) a slim model (options: the fields of ``TrainConfig``)."""
    return stages.retrain_stage(checkpoint, dataset, TrainConfig(**options), out_dir, from_scratch, reporter)


def compare(
    base: str | Path, slim: str | Path, dataset: Dataset, out_dir: str | Path, reporter: Reporter = SILENT, **options
) -> dict:
    """Accuracy, F1, parameters, MACs, size and latency of two models (options: ``CompareConfig``)."""
    return stages.compare_stage(base, slim, dataset, CompareConfig(**options), out_dir, reporter)


def explain(
    checkpoint: str | Path,
    dataset: Dataset,
    out_dir: str | Path,
    compare_with: str | Path | None = None,
    reporter: Reporter = SILENT,
    **options,
) -> dict:
    """CAMs, guided backprop, saliency, feature maps and receptive fields of test images, a second model
    (``compare_with``) beside it on the same images (options: the fields of ``ExplainConfig``)."""
    return explain_stage(checkpoint, dataset, ExplainConfig(**options), out_dir, reporter, compare_with)


def run(
    out_dir: str | Path,
    source: str = "textures",
    arch: str = "vgg11",
    image_size: int = 64,
    epochs: int = 5,
    reporter: Reporter = SILENT,
) -> dict:
    """The whole pipeline with default settings; returns the summary also written to run.json."""
    return run_pipeline(
        DataConfig(source=source, image_size=image_size),
        arch,
        out_dir,
        train=TrainConfig(epochs=epochs),
        reporter=reporter,
    )


STAGES = ("data", "train", "analyze", "truncate", "retrain", "compare", "explain")


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
    reporter: Reporter = SILENT,
) -> dict:
    """Run every stage into ``out_dir`` (base/, analysis/, slim/, compare/, explain/); return run.json's summary."""
    out = Path(out_dir)
    train = train or TrainConfig()
    retrain = retrain or train
    analyze = analyze or AnalyzeConfig()
    cut = cut or TruncateConfig()
    compare = compare or CompareConfig()
    explain = explain or ExplainConfig()

    dataset = load_stage_data(data, reporter)
    base = train_stage(dataset, data, arch, train, out / "base", pretrained=pretrained, reporter=reporter)
    base_ckpt = out / "base" / CHECKPOINT_NAME
    analysis = analyze_stage(base_ckpt, dataset, analyze, out / "analysis", reporter=reporter)
    truncated = truncate_stage(base_ckpt, cut, out / "slim" / "initial.safetensors", out / "analysis" / "analysis.json")
    reporter.update("truncate", 1.0, f"cut at {truncated['cut_point']['name']}")
    slim = retrain_stage(
        out / "slim" / "initial.safetensors",
        dataset,
        retrain,
        out / "slim",
        from_scratch=retrain_from_scratch,
        reporter=reporter,
    )
    slim_ckpt = out / "slim" / CHECKPOINT_NAME
    comparison = compare_stage(base_ckpt, slim_ckpt, dataset, compare, out / "compare", reporter=reporter)
    explanation = explain_stage(
        base_ckpt, dataset, explain, out / "explain", reporter=reporter, compare_checkpoint=slim_ckpt
    )

    summary = {
        "data": {
            "source": data.source,
            "classes": dataset.classes,
            "image_size": data.image_size,
            "splits": dataset.info["sizes"],
        },
        "architecture": arch,
        "base": _model_summary(base, comparison["base"]),
        "slim": _model_summary(slim, comparison["slim"]),
        "cut_point": {
            **truncated["cut_point"],
            "chosen_by": truncated["chosen_by"],
            "of": truncated["cut_points_total"],
        },
        "knee_found": analysis["knee_found"],
        "knee": analysis["knee"],
        "comparison": comparison["comparison"],
        "explain": _explain_summary(explanation, "explain"),
        "outputs": {
            "base_checkpoint": str(base_ckpt),
            "slim_checkpoint": str(slim_ckpt),
            "analysis": str(out / "analysis" / "analysis.json"),
            "compare": str(out / "compare" / "compare.json"),
            "explain": str(out / "explain" / EXPLAIN_JSON),
            "report": str(out / "report.html"),
        },
    }
    write_json(out / "run.json", summary)
    reporter.update("report", 0.0, "writing report.html")
    write_run_report(out)
    reporter.update("report", 1.0, "report.html written")
    return summary


def _model_summary(trained: dict, profiled: dict) -> dict:
    return {
        "accuracy": profiled["accuracy"],
        "macro_f1": profiled["macro_f1"],
        "params": profiled["params"],
        "macs": profiled["macs"],
        "checkpoint_bytes": profiled["checkpoint_bytes"],
        "latency_ms": {k: v["median_ms"] for k, v in profiled["latency"].items()},
        "best_epoch": trained["best_epoch"],
        "epochs_run": trained["epochs_run"],
    }


def _explain_summary(explanation: dict, folder: str) -> dict:
    """The explain stage in brief; figure paths are relative to the run folder (as run.json's own)."""
    models = explanation["models"]
    return {
        "file": f"{folder}/{EXPLAIN_JSON}",
        "methods": explanation["methods"],
        "target": explanation["target"],
        "images": len(explanation["images"]),
        "layers": {key: model["layer"] for key, model in models.items()},
        "accuracy_on_these_images": {key: model["accuracy_on_these_images"] for key, model in models.items()},
        "agreement": explanation["agreement"],
        "figures": {name: f"{folder}/{file}" for name, file in explanation["figures"].items()},
    }
