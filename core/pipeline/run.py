"""The whole pipeline in one call: train → analyze → truncate → retrain → compare → explain."""

from __future__ import annotations

from pathlib import Path

from .config import AnalyzeConfig, CompareConfig, DataConfig, ExplainConfig, TrainConfig, TruncateConfig
from .explain import JSON_NAME as EXPLAIN_JSON
from .explain import explain_stage
from core.report import write_run_report

from .progress import SILENT, Reporter
from .stages import (
    CHECKPOINT_NAME,
    analyze_stage,
    compare_stage,
    load_data,
    retrain_stage,
    train_stage,
    truncate_stage,
    write_json,
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

    dataset = load_data(data, reporter)
    base = train_stage(dataset, data, arch, train, out / "base", pretrained=pretrained, reporter=reporter)
    base_ckpt = out / "base" / CHECKPOINT_NAME
    analysis = analyze_stage(base_ckpt, dataset, analyze, out / "analysis", reporter=reporter)
    truncated = truncate_stage(base_ckpt, cut, out / "slim" / "initial.safetensors", out / "analysis" / "analysis.json")
    reporter.update("truncate", 1.0, f"cut at {truncated['cut_point']['name']}")
    slim = retrain_stage(out / "slim" / "initial.safetensors", dataset, retrain, out / "slim",
                         from_scratch=retrain_from_scratch, reporter=reporter)
    slim_ckpt = out / "slim" / CHECKPOINT_NAME
    comparison = compare_stage(base_ckpt, slim_ckpt, dataset, compare, out / "compare", reporter=reporter)
    explanation = explain_stage(base_ckpt, dataset, explain, out / "explain", reporter=reporter,
                                compare_checkpoint=slim_ckpt)

    summary = {
        "data": {"source": data.source, "classes": dataset.classes, "image_size": data.image_size,
                 "splits": dataset.info["sizes"]},
        "architecture": arch,
        "base": _model_summary(base, comparison["base"]),
        "slim": _model_summary(slim, comparison["slim"]),
        "cut_point": {**truncated["cut_point"], "chosen_by": truncated["chosen_by"],
                      "of": truncated["cut_points_total"]},
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
