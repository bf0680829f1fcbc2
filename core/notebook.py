"""A short Python API for notebooks: load models as ``nn.Module``s and run any stage in-process.

    from core import notebook as lc
    data = lc.load_data("textures", image_size=64)
    base = lc.train(data, "vgg11", "out/base", epochs=4)
    analysis = lc.analyze("out/base/model.safetensors", data, "out/analysis")
    shown = lc.explain("out/base/model.safetensors", data, "out/explain", compare_with="out/slim/model.safetensors")
    model, spec = lc.load_model("out/base/model.safetensors")
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from .pipeline.checkpoint import ModelSpec, load_checkpoint
from .pipeline.config import AnalyzeConfig, CompareConfig, DataConfig, ExplainConfig, TrainConfig, TruncateConfig
from .pipeline.data import Dataset
from .pipeline.progress import SILENT, Reporter
from .pipeline.run import run_pipeline
from .pipeline import stages
from .pipeline.explain import explain_stage

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


def train(dataset: Dataset, arch: str, out_dir: str | Path, pretrained: bool = False,
          reporter: Reporter = SILENT, **options) -> dict:
    """Train a base model (options: the fields of ``TrainConfig``, e.g. epochs, lr)."""
    data_config = DataConfig.model_validate(dataset.info["data_config"]) if "data_config" in dataset.info \
        else DataConfig(source=str(dataset.info.get("source", "custom")), image_size=dataset.image_size)
    return stages.train_stage(dataset, data_config, arch, TrainConfig(**options), out_dir, pretrained, reporter)


def analyze(checkpoint: str | Path, dataset: Dataset, out_dir: str | Path, reporter: Reporter = SILENT,
            **options) -> dict:
    """GBP maps, SSIM matrix, curves and knee (options: the fields of ``AnalyzeConfig``)."""
    return stages.analyze_stage(checkpoint, dataset, AnalyzeConfig(**options), out_dir, reporter)


def truncate(checkpoint: str | Path, out_path: str | Path, cut: str | int = "knee",
             analysis: str | Path | None = None, dropout: float = 0.2) -> dict:
    """Cut a base model at the knee of ``analysis`` (its analysis.json) or at a named/indexed cut point."""
    return stages.truncate_stage(checkpoint, TruncateConfig(cut=str(cut), dropout=dropout), out_path, analysis)


def retrain(checkpoint: str | Path, dataset: Dataset, out_dir: str | Path, from_scratch: bool = False,
            reporter: Reporter = SILENT, **options) -> dict:
    """Fine-tune (or train from scratch) a slim model (options: the fields of ``TrainConfig``)."""
    return stages.retrain_stage(checkpoint, dataset, TrainConfig(**options), out_dir, from_scratch, reporter)


def compare(base: str | Path, slim: str | Path, dataset: Dataset, out_dir: str | Path,
            reporter: Reporter = SILENT, **options) -> dict:
    """Accuracy, F1, parameters, MACs, size and latency of two models (options: ``CompareConfig``)."""
    return stages.compare_stage(base, slim, dataset, CompareConfig(**options), out_dir, reporter)


def explain(checkpoint: str | Path, dataset: Dataset, out_dir: str | Path, compare_with: str | Path | None = None,
            reporter: Reporter = SILENT, **options) -> dict:
    """CAMs, guided backprop, saliency, feature maps and receptive fields of test images, a second model
    (``compare_with``) beside it on the same images (options: the fields of ``ExplainConfig``)."""
    return explain_stage(checkpoint, dataset, ExplainConfig(**options), out_dir, reporter, compare_with)


def run(out_dir: str | Path, source: str = "textures", arch: str = "vgg11", image_size: int = 64,
        epochs: int = 5, reporter: Reporter = SILENT) -> dict:
    """The whole pipeline with default settings; returns the summary also written to run.json."""
    return run_pipeline(DataConfig(source=source, image_size=image_size), arch, out_dir,
                        train=TrainConfig(epochs=epochs), reporter=reporter)
