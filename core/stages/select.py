"""The auto cut (``select``) and the sweep: slim models cut and retrained at chosen cut points, measured alike.

``select_stage`` runs the search of ``cut_search`` with real retraining and keeps the smallest slim model within
the accuracy budget; ``sweep_stage`` retrains one slim model per chosen cut point to show the whole trade-off.
Both write one folder per candidate (``candidates/cut-05-layer3.0/``: the slim model as cut, retrained, its
metrics and pictures), a JSON result and a chart of accuracy against MACs and parameters.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from layercut.contracts import files
from layercut.contracts.configs import BudgetConfig, SelectConfig, SweepConfig, TrainConfig, TruncateConfig
from layercut.contracts.errors import LayercutError
from layercut.contracts.results import (
    AnalyzeResult,
    Budget,
    Candidate,
    CandidateReason,
    OtherRules,
    SelectResult,
    SweepBase,
    SweepCutResult,
    SweepResult,
)
from layercut.contracts.spec import CutPointRef, ModelSpec
from layercut.stages import plots
from layercut.stages.checkpoint import load_checkpoint
from layercut.stages.cut_search import Trial, probe_choice, search_cut
from layercut.stages.cutpoints import CutPoint, cut_points, resolve_cut_point
from layercut.stages.data import Dataset
from layercut.stages.devices import resolve_device
from layercut.stages.metrics import classification_report
from layercut.stages.profiling import count_macs, count_parameters, measure_latency
from layercut.stages.progress import SILENT, Reporter
from layercut.stages.stages import (
    check_dataset_fits,
    depth_probes_picture,
    read_analysis,
    retrain_stage,
    truncate_stage,
    write_result,
)
from layercut.stages.training import predict
from layercut.stages.truncation import truncate

LATENCY_WARMUP, LATENCY_REPEATS = 2, 5
"""Timed runs of each candidate at batch 1 on the CPU: enough to rank them (compare measures the chosen one fully)."""


def candidate_folder(index: int, name: str) -> str:
    """The folder of a candidate inside ``candidates/``, e.g. ``cut-05-layer3.0``."""
    return f"cut-{index:02d}-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}"


def link_or_copy(source: Path, target: Path) -> Path:
    """``target`` as a hard link to ``source`` (no second copy of a large checkpoint), or a copy across devices."""
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
    return target


def cpu_latency_ms(model: nn.Module, image_size: int) -> float:
    """Median CPU milliseconds of one forward pass of one image."""
    measured = measure_latency(
        model.cpu(), (1, 3, image_size, image_size), device="cpu", warmup=LATENCY_WARMUP, repeats=LATENCY_REPEATS
    )
    return float(measured["median_ms"])


def budget_record(config: BudgetConfig, base_val_accuracy: float) -> Budget:
    """The budget, with the validation accuracy it asks for given the base model's."""
    return Budget(
        description=config.describe(),
        max_drop=None if config.min_accuracy is not None else config.max_drop,
        min_accuracy=config.min_accuracy,
        base_val_accuracy=base_val_accuracy,
        threshold=config.threshold(base_val_accuracy),
    )


@dataclass
class Candidates:
    """Cuts and retrains slim models of one base model into ``folder``, each measured the same way."""

    base_checkpoint: Path
    dataset: Dataset
    retrain: TrainConfig
    dropout: float
    from_scratch: bool
    folder: Path
    threshold: float
    probe: dict[int, float]
    model: nn.Module = field(init=False)
    spec: ModelSpec = field(init=False)
    points: list[CutPoint] = field(init=False)
    done: dict[int, Candidate] = field(default_factory=dict)
    sizes: dict[int, tuple[int, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.model, self.spec = load_checkpoint(self.base_checkpoint)
        if self.spec.is_slim:
            raise LayercutError(
                f"{self.base_checkpoint.name} is already a slim model (cut at {self.spec.cut_point.name}); "
                "give its base model"
            )
        check_dataset_fits(self.spec, self.dataset)
        self.points = cut_points(self.model)

    def ref(self, index: int) -> CutPointRef:
        return CutPointRef(index=index, name=self.points[index].name)

    def size(self, index: int) -> tuple[int, int]:
        """(MACs, parameters) of the slim model cut at ``index`` with its new head (measured once, untrained)."""
        if index not in self.sizes:
            slim = truncate(self.model, self.points[index], self.spec.num_classes, self.dropout, self.spec.image_size)
            shape = (1, 3, self.spec.image_size, self.spec.image_size)
            self.sizes[index] = (count_macs(slim, shape), count_parameters(slim))
        return self.sizes[index]

    def run(
        self, index: int, reasons: list[CandidateReason], reporter: Reporter, folder: Path | None = None
    ) -> Candidate:
        """Cut at ``index``, retrain, and measure the slim model (its folder, by default ``candidates/cut-…`` of
        ``self.folder``, keeps everything retrain writes)."""
        started = time.perf_counter()
        point = self.points[index]
        folder = folder or self.folder / candidate_folder(index, point.name)
        reporter.update("retrain", 0.0, f"cut at {point.name} ({', '.join(reasons)})")
        cut = truncate_stage(
            self.base_checkpoint,
            TruncateConfig(cut=str(index), dropout=self.dropout),
            folder / files.INITIAL_CHECKPOINT,
        )
        write_result(folder / files.TRUNCATE_JSON, cut.model_copy(update={"chosen_by": "auto"}))
        trained = retrain_stage(
            folder / files.INITIAL_CHECKPOINT, self.dataset, self.retrain, folder, self.from_scratch, reporter
        )
        slim, _ = load_checkpoint(folder / files.CHECKPOINT)
        macs, params = self.size(index)
        candidate = Candidate(
            cut_point=self.ref(index),
            reasons=reasons,
            params=params,
            macs=macs,
            latency_ms=cpu_latency_ms(slim, self.spec.image_size),
            val_accuracy=trained.val.accuracy,
            val_macro_f1=trained.val.macro_f1,
            accuracy=trained.accuracy,
            macro_f1=trained.macro_f1,
            probe_accuracy=self.probe.get(index),
            within_budget=trained.val.accuracy >= self.threshold,
            epochs_run=trained.epochs_run,
            seconds=time.perf_counter() - started,
            folder=str(folder),
        )
        self.done[index] = candidate
        return candidate


def measure_base(model: nn.Module, spec: ModelSpec, dataset: Dataset, device: torch.device) -> SweepBase:
    """The base model measured the way candidates are: validation and test accuracy and F1, size, CPU latency."""
    model.to(device)
    val = classification_report(
        predict(model, dataset.val, spec.mean, spec.std, device), dataset.val.labels, dataset.classes
    )
    test = classification_report(
        predict(model, dataset.test, spec.mean, spec.std, device), dataset.test.labels, dataset.classes
    )
    return SweepBase(
        params=count_parameters(model),
        macs=count_macs(model, (1, 3, spec.image_size, spec.image_size)),
        latency_ms=cpu_latency_ms(model, spec.image_size),
        val_accuracy=val["accuracy"],
        val_macro_f1=val["macro_f1"],
        accuracy=test["accuracy"],
        macro_f1=test["macro_f1"],
    )


def probe_curve(analysis: AnalyzeResult | None) -> dict[int, float]:
    """The analysis's probe accuracy per cut point index (empty without probes)."""
    if analysis is None or analysis.depth_probes is None:
        return {}
    return {point.index: point.val_accuracy for point in analysis.depth_probes.points}


def other_rules(analysis: AnalyzeResult | None, threshold: float, auto: CutPointRef | None) -> OtherRules:
    """What the knee, the probes (the shallowest cut point whose probe reaches ``threshold``) and the auto rule
    choose for a base model; without its analysis only the auto rule's choice is known."""
    if analysis is None:
        return OtherRules(knee=None, knee_reason=None, probe=None, auto=auto)
    curve = probe_curve(analysis)
    probe_index = probe_choice([curve[i] for i in sorted(curve)], threshold) if curve else None
    return OtherRules(
        knee=CutPointRef(index=analysis.cut_point.index, name=analysis.cut_point.name),
        knee_reason=analysis.knee.reason,
        probe=None
        if probe_index is None
        else CutPointRef(index=probe_index, name=analysis.cut_points[probe_index].name),
        auto=auto,
    )


def budget_pictures(analysis: AnalyzeResult | None, budget: Budget, out_dir: Path) -> None:
    """The analysis' depth-probe picture drawn again with this budget's band and the probe's choice under it."""
    if analysis is not None and analysis.depth_probes is not None:
        depth_probes_picture(analysis, budget.threshold, budget.base_val_accuracy, out_dir / files.DEPTH_PROBES_PNG)


def _analysis_for(path: str | Path | None, spec: ModelSpec, points: int) -> AnalyzeResult | None:
    if path is None:
        return None
    analysis = read_analysis(path)
    if analysis.architecture != spec.architecture or len(analysis.cut_points) != points:
        raise LayercutError(
            f"the analysis {Path(path).name} is of a {analysis.architecture} with {len(analysis.cut_points)} cut "
            f"points, not of this {spec.architecture} with {points}; analyse this model"
        )
    return analysis


def _verdict(chosen: Candidate, budget: Budget, total: int, base_params: int) -> tuple[str, float | None]:
    """The outcome in one sentence, and the shortfall in points (None within the budget)."""
    where = f"cut at {chosen.cut_point.name} (cut point {chosen.cut_point.index} of {total})"
    scored = f"validation accuracy {chosen.val_accuracy:.1%} against the base model's {budget.base_val_accuracy:.1%}"
    if chosen.within_budget:
        kept = f"{chosen.params:,} of {base_params:,} parameters kept ({chosen.params / max(base_params, 1):.0%})"
        return f"Kept the accuracy: {where}, {scored}, within the budget ({budget.description}); {kept}.", None
    shortfall = round((budget.threshold - chosen.val_accuracy) * 100, 2)
    return (
        f"No slim model kept the accuracy: the best, {where}, reached {scored}, {shortfall:.1f} points short of "
        f"the {budget.threshold:.1%} the budget asks ({budget.description}). Keep the base model, allow a larger "
        "drop, or retrain longer.",
        shortfall,
    )


def select_stage(
    base_checkpoint: str | Path,
    dataset: Dataset,
    analysis_path: str | Path,
    config: SelectConfig,
    retrain: TrainConfig,
    out_dir: str | Path,
    dropout: float = 0.2,
    from_scratch: bool = False,
    reporter: Reporter = SILENT,
) -> SelectResult:
    """The auto cut: retrain candidates smallest first until the smallest slim model within the accuracy budget is
    certain; writes select.json, the trade-off chart, each candidate's folder, and the chosen candidate's files
    beside them (``model.safetensors`` retrained, ``initial.safetensors`` as cut, metrics.json, truncate.json and
    its pictures), so the folder reads as the slim model's."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    base_checkpoint = Path(base_checkpoint)
    model, spec = load_checkpoint(base_checkpoint)
    analysis = _analysis_for(analysis_path, spec, len(cut_points(model)))
    assert analysis is not None
    reporter.update("select", 0.0, "measuring the base model on the validation split")
    base = measure_base(model, spec, dataset, resolve_device(retrain.device))
    budget = budget_record(config, base.val_accuracy)
    curve = probe_curve(analysis)
    candidates = Candidates(
        base_checkpoint,
        dataset,
        retrain,
        dropout,
        from_scratch,
        out_dir / files.CANDIDATES_FOLDER,
        budget.threshold,
        curve,
    )
    total = len(candidates.points)

    def retrain_candidate(index: int, reasons: list[CandidateReason]) -> Trial:
        done = len(candidates.done)
        share = 1.0 / max(config.max_retrains, done + 1)
        candidate = candidates.run(index, reasons, reporter.scaled(done * share, (done + 1) * share))
        return Trial(index, candidate.macs, candidate.params, candidate.val_accuracy)

    outcome = search_cut(
        points=total,
        threshold=budget.threshold,
        knee_index=analysis.cut_point.index,
        probe=[curve[i] for i in sorted(curve)] if curve else None,
        size_of=candidates.size,
        retrain=retrain_candidate,
        max_retrains=config.max_retrains,
    )
    chosen = candidates.done[outcome.chosen.index]
    for path in Path(chosen.folder).iterdir():  # the chosen slim model's files, as truncate and retrain write them
        if path.is_file():
            link_or_copy(path, out_dir / path.name)
    base_params = count_parameters(model)
    verdict, shortfall = _verdict(chosen, budget, total, base_params)
    if chosen.within_budget and not outcome.certain:
        verdict += f" (Not certain to be the smallest: {outcome.stopped}.)"
    rules = other_rules(analysis, budget.threshold, chosen.cut_point)
    budget_pictures(analysis, budget, out_dir)
    ordered = [candidates.done[trial.index] for trial in outcome.trials]
    plots.plot_trade_off(
        ordered,
        budget,
        rules,
        out_dir / files.TRADE_OFF_PNG,
        f"{spec.architecture}: the auto cut's candidates (validation accuracy against size)",
        probe=curve,
        chosen=chosen.cut_point,
    )
    result = SelectResult(
        stage="select",
        checkpoint=str(out_dir / files.CHECKPOINT),
        initial_checkpoint=str(out_dir / files.INITIAL_CHECKPOINT),
        cut_point=chosen.cut_point,
        cut_points_total=total,
        within_budget=chosen.within_budget,
        shortfall=shortfall,
        verdict=verdict,
        budget=budget,
        candidates=ordered,
        stopped=outcome.stopped,
        rules=rules,
        base_params=base_params,
        slim_params=chosen.params,
        params_kept=chosen.params / max(base_params, 1),
        seconds=time.perf_counter() - started,
        config=config,
        retrain=retrain,
    )
    write_result(out_dir / files.SELECT_JSON, result)
    reporter.update("select", 1.0, verdict)
    return result


def sweep_indices(model: nn.Module, cuts: str) -> list[int]:
    """The cut point indices a sweep's ``cuts`` names: ``all``, ``every:K`` (and the last), or a list of indices
    and names; sorted, without repeats."""
    points = cut_points(model)
    text = SweepConfig(cuts=cuts).cuts  # checked and without spaces
    if text == "all":
        return list(range(len(points)))
    if text.startswith("every:"):
        step = int(text.split(":", 1)[1])
        return sorted({*range(0, len(points), step), len(points) - 1})
    return sorted({resolve_cut_point(model, item).index for item in text.split(",")})


@dataclass(frozen=True)
class SweepPlan:
    """A sweep before its retraining: the cut points, the base model measured, the budget, the probe per cut point."""

    cut_points: list[CutPointRef]
    base: SweepBase
    budget: Budget
    probe: dict[int, float]


def plan_sweep(
    base_checkpoint: str | Path,
    dataset: Dataset,
    config: SweepConfig,
    analysis_path: str | Path | None,
    device: torch.device,
    reporter: Reporter = SILENT,
) -> SweepPlan:
    """Resolve the sweep's cut points, measure the base model and set the budget (what every cut is checked on)."""
    model, spec = load_checkpoint(base_checkpoint)
    if spec.is_slim:
        raise LayercutError(f"a sweep cuts a base model; this one is already cut at {spec.cut_point.name}")
    check_dataset_fits(spec, dataset)
    points = cut_points(model)
    indices = sweep_indices(model, config.cuts)
    analysis = _analysis_for(analysis_path, spec, len(points))
    reporter.update("sweep", 0.0, f"measuring the base model before retraining {len(indices)} cut points")
    base = measure_base(model, spec, dataset, device)
    return SweepPlan(
        cut_points=[CutPointRef(index=i, name=points[i].name) for i in indices],
        base=base,
        budget=budget_record(config, base.val_accuracy),
        probe=probe_curve(analysis),
    )


def sweep_cut_stage(
    base_checkpoint: str | Path,
    dataset: Dataset,
    index: int,
    threshold: float,
    probe_accuracy: float | None,
    retrain: TrainConfig,
    out_dir: str | Path,
    dropout: float = 0.2,
    from_scratch: bool = False,
    reporter: Reporter = SILENT,
) -> SweepCutResult:
    """One cut point of a sweep, cut and retrained into ``out_dir`` (the files retrain writes, plus truncate.json)."""
    out_dir = Path(out_dir)
    candidates = Candidates(
        Path(base_checkpoint),
        dataset,
        retrain,
        dropout,
        from_scratch,
        out_dir,
        threshold,
        {} if probe_accuracy is None else {index: probe_accuracy},
    )
    if not 0 <= index < len(candidates.points):
        raise LayercutError(f"cut point {index} is out of range: the model has {len(candidates.points)}")
    candidate = candidates.run(index, ["sweep"], reporter, folder=out_dir)
    return SweepCutResult(stage="sweep_cut", checkpoint=str(out_dir / files.CHECKPOINT), candidate=candidate)


def gather_sweep(
    base_checkpoint: str | Path,
    architecture: str,
    plan: SweepPlan,
    swept: list[Candidate],
    analysis_path: str | Path | None,
    config: SweepConfig,
    retrain: TrainConfig,
    out_dir: str | Path,
    seconds: float,
) -> SweepResult:
    """sweep.json and the trade-off chart from the retrained cut points (the knee and the probe choice marked when
    the base model's analysis is given)."""
    out_dir = Path(out_dir)
    analysis = read_analysis(analysis_path) if analysis_path is not None else None
    swept = sorted(swept, key=lambda c: c.cut_point.index)
    within = sorted((c for c in swept if c.within_budget), key=lambda c: (c.macs, c.params, c.cut_point.index))
    smallest = within[0].cut_point if within else None
    rules = other_rules(analysis, plan.budget.threshold, smallest)
    budget_pictures(analysis, plan.budget, out_dir)
    plots.plot_trade_off(
        swept,
        plan.budget,
        rules,
        out_dir / files.TRADE_OFF_PNG,
        f"{architecture}: accuracy against size, one slim model per cut point",
        base=plan.base,
        probe=plan.probe,
        chosen=smallest,
    )
    result = SweepResult(
        stage="sweep",
        architecture=architecture,
        base_checkpoint=str(base_checkpoint),
        base=plan.base,
        budget=plan.budget,
        candidates=swept,
        smallest_within_budget=smallest,
        rules=rules,
        chart=files.TRADE_OFF_PNG,
        seconds=seconds,
        config=config,
        retrain=retrain,
    )
    write_result(out_dir / files.SWEEP_JSON, result)
    return result


def sweep_stage(
    base_checkpoint: str | Path,
    dataset: Dataset,
    config: SweepConfig,
    retrain: TrainConfig,
    out_dir: str | Path,
    analysis_path: str | Path | None = None,
    from_scratch: bool = False,
    reporter: Reporter = SILENT,
) -> SweepResult:
    """One slim model per chosen cut point, retrained with the same budget, one after the other in this process;
    sweep.json, the trade-off chart and ``candidates/`` (the service runs the cut points as parallel jobs)."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    plan = plan_sweep(base_checkpoint, dataset, config, analysis_path, resolve_device(retrain.device), reporter)
    swept = []
    for step, ref in enumerate(plan.cut_points):
        share = reporter.scaled(step / len(plan.cut_points), (step + 1) / len(plan.cut_points))
        folder = out_dir / files.CANDIDATES_FOLDER / candidate_folder(ref.index, ref.name)
        done = sweep_cut_stage(
            base_checkpoint,
            dataset,
            ref.index,
            plan.budget.threshold,
            plan.probe.get(ref.index),
            retrain,
            folder,
            config.dropout,
            from_scratch,
            share,
        )
        swept.append(done.candidate)
    architecture = load_checkpoint(base_checkpoint)[1].architecture
    result = gather_sweep(
        base_checkpoint,
        architecture,
        plan,
        swept,
        analysis_path,
        config,
        retrain,
        out_dir,
        time.perf_counter() - started,
    )
    reporter.update("sweep", 1.0, f"{len(swept)} cut points retrained")
    return result
