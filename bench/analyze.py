"""Benchmark: the analyze stage's core against what a user would otherwise write.

Not a test: it prints a table and the speed-ups against a baseline measured in the same run.

ours      the analyze stage's streamed maps (stream_maps): per GBP batch one forward capturing every cut
          point and one backward per cut point, map_images, the batch added to the SSIM sums (float64;
          fused numba kernels on the CPU, torch passes on a GPU) and written to gbp_maps.npz, then
          dropped -> cut_curve
baseline  captum NeuronGuidedBackprop(model, layer) once per cut point over the whole probe batch
          (neuron_selector sums the layer's output per example) -> the same map_images ->
          skimage.metrics.structural_similarity(a, b, channel_axis=0, data_range=1.0) for every pair of
          cut points and every probe image, averaged into the matrix -> cut_curve

Both sides get the same model (``build_model(arch, 3)``, seeded random init, eval mode: the weights do
not change the amount of work, so no training is needed) and the same probe images (a seeded, stratified
sample of the built-in ``textures`` validation split, normalised with the train split's per-channel
mean/std as the analyze stage does). The map normalisation is the same function on both sides; it is
timed in its own column and counted in both totals.

Peak memory: each timed run of each side runs in a forked child process (so that neither side reuses memory the
other freed), where a thread samples the resident memory every 10 ms; a side's peak is reported as what it added
to the resident memory it started from (the parent's, with the model and probes loaded) and as the absolute peak.

Run:  .venv/bin/python bench/analyze.py [--arch vgg16 --image-size 64 --probes 32 --repeats 3]
      [--threads 1] [--device cuda] [--memory-budget MIB] [--skip-baseline] [--json result.json]
Exit status 1 when the two sides' cut curves differ by more than --tolerance (default 1e-4).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import statistics
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import environment  # noqa: E402  (bench/environment.py)
import numpy as np  # noqa: E402
import torch  # noqa: E402

from layercut.stages.analysis_maps import stream_maps  # noqa: E402
from layercut.stages.analysis_memory import plan_memory, resident_bytes  # noqa: E402
from layercut.stages.architectures import ARCHITECTURES, build_model  # noqa: E402
from layercut.stages.curves import cut_curve  # noqa: E402
from layercut.stages.cutpoints import ACTIVATIONS, cut_points, feature_sequence  # noqa: E402
from layercut.stages.data import dataset_statistics, load_dataset, stratified_sample  # noqa: E402
from layercut.stages.gbp import GBP_RULES, map_images  # noqa: E402
from layercut.stages.progress import SILENT  # noqa: E402
from layercut.stages.ssim import similarity_matrix  # noqa: E402
from layercut.stages.training import normalise  # noqa: E402

TARGET_CPU = 2.0
TARGET_GPU = 10.0
DATA_RANGE = 1.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--arch",
        default="vgg16",
        choices=ARCHITECTURES,
        metavar="ARCH",
        help="smallcnn, vgg11..vgg19 (and _bn), resnet18..resnet152, efficientnet_b0..b3, mobilenet_v2, mobilenet_v3_small/large",
    )
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--probes", type=int, default=32, help="probe images from the textures validation split")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each side; the best (minimum) counts")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="our GBP batch size, at most (default: the analyze stage's own, sized to the image and device; the "
        "baseline runs all probes at once)",
    )
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own choice)")
    p.add_argument("--seed", type=int, default=0, help="model init and probe sample seed")
    p.add_argument(
        "--baseline-ssim-sample",
        type=int,
        default=0,
        metavar="N",
        help="time only N (image, pair) skimage SSIM calls and extrapolate to all of them (default 0: compute all)",
    )
    p.add_argument(
        "--baseline-ssim-dtype",
        default="float64",
        choices=("float64", "float32"),
        help="dtype handed to skimage (float64 = the same arithmetic as ours; float32 makes skimage compute in float32)",
    )
    p.add_argument(
        "--gbp-rule",
        default="auto",
        choices=("auto", *GBP_RULES),
        help="our GBP rule; auto = relu on networks whose only activation is nn.ReLU, else ungated (the rule captum "
        "implements: it guides nn.ReLU only), so that both sides compute the same maps",
    )
    p.add_argument(
        "--memory-budget",
        type=int,
        default=None,
        metavar="MIB",
        help="our analysis's memory budget (the analyze stage's --memory-budget): it may lower our GBP batch",
    )
    p.add_argument(
        "--skip-baseline",
        action="store_true",
        help="time and measure ours only (for sizes where the baseline would not fit or take hours); no check",
    )
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest allowed |curve difference|")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.probes < 1 or args.repeats < 1 or (args.batch_size is not None and args.batch_size < 1):
        p.error("--probes, --repeats and --batch-size must be at least 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda asked for, but torch sees no CUDA GPU")
    return args


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def now(device: torch.device) -> float:
    """perf_counter after waiting for queued GPU work, so a difference of two calls is wall time of real work."""
    sync(device)
    return time.perf_counter()


# ------------------------------------------------------------------------------------------------
# The two sides
# ------------------------------------------------------------------------------------------------


class PeakMemory:
    """Samples the resident memory every ``interval`` seconds while the block runs: ``added`` is the peak above
    what the block started from, ``peak`` the absolute peak (bytes)."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.start = self.peak = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, resident_bytes())

    def __enter__(self) -> PeakMemory:
        self.start = self.peak = resident_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling (the peak is final from here on; later calls do nothing)."""
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, resident_bytes())

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def added(self) -> int:
        return self.peak - self.start


def run_ours(
    model: torch.nn.Module,
    probes: torch.Tensor,
    device: torch.device,
    batch_size: int | None,
    rule: str,
    budget_mb: int | None = None,
    keep_images: bool = True,
) -> dict:
    """The analyze stage's own map work, gbp_maps.npz included, in the batches its memory plan allows; with
    ``keep_images`` the map images are read back from the npz afterwards (untimed, unmeasured) for the check."""
    with tempfile.TemporaryDirectory() as tmp, PeakMemory() as memory:
        t0 = now(device)
        plan = plan_memory(
            model,
            tuple(probes.shape[1:]),
            len(cut_points(model)),
            probes.shape[0],
            batch_size=batch_size,
            budget_mb=budget_mb,
            rule=rule,
            device=device,
        )
        streamed = stream_maps(
            model,
            probes,
            Path(tmp) / "gbp_maps.npz",
            {},
            rule=rule,
            batch_size=plan.batch_size,
            grayscale=False,
            data_range=DATA_RANGE,
            grid_rows=1,
            device=device,
            reporter=SILENT,
        )
        curve = cut_curve(streamed.matrix)
        t1 = now(device)
        memory.stop()
        images = None
        if keep_images:
            with np.load(Path(tmp) / "gbp_maps.npz") as npz:
                images = map_images(torch.from_numpy(npz["maps"]))
    return {
        "gbp": streamed.gbp_seconds,
        "norm": streamed.maps_seconds,
        "ssim": streamed.ssim_seconds,
        "total": t1 - t0,
        "images": images,
        "matrix": streamed.matrix,
        "curve": curve,
        "batch_size": plan.batch_size,
        "estimated_peak": plan.peak(),
        "peak_added": memory.added,
        "peak": memory.peak,
    }


def setup(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.Tensor, torch.device, str, list[str]]:
    """The model, probes, device and GBP rule both sides get (seeded: every process builds the same ones)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    probes = probe_images(args.image_size, args.probes, args.seed).to(device)
    torch.manual_seed(args.seed)
    model = build_model(args.arch, 3).eval().to(device)
    others = sorted(
        {type(m).__name__ for m in model.modules() if isinstance(m, ACTIVATIONS) and type(m) is not torch.nn.ReLU}
    )
    rule = args.gbp_rule if args.gbp_rule != "auto" else ("ungated" if others else "relu")
    return model, probes, device, rule, others


def run_side(side: str, args: argparse.Namespace, extrapolating: bool) -> dict:
    """One timed run of one side in this (fresh) process, after an untimed warm-up of it on two probes."""
    model, probes, device, rule, _ = setup(args)
    if side == "ours":
        run_ours(model, probes[:2], device, args.batch_size, rule, keep_images=False)
        return run_ours(model, probes, device, args.batch_size, rule, args.memory_budget, not args.skip_baseline)
    run_baseline(model, probes[:2], device, sample=4, dtype="float64", seed=0)
    sample = args.baseline_ssim_sample if extrapolating else 0
    return run_baseline(model, probes, device, sample, args.baseline_ssim_dtype, args.seed)


def in_child(side: str, args: argparse.Namespace, extrapolating: bool) -> dict:
    """``run_side`` in a spawned child process: neither side reuses memory the other freed (forking a process
    whose torch threads have run can hang), and the child's peak memory is that side's alone."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(run_side, (side, args, extrapolating))


def _sum_per_example(out: torch.Tensor) -> torch.Tensor:
    return out.flatten(1).sum(1)


def baseline_gbp(model: torch.nn.Module, probes: torch.Tensor) -> torch.Tensor:
    """captum's NeuronGuidedBackprop, one attribute call per cut point over all probes: (N, L, C, H, W) on the CPU."""
    from captum.attr import NeuronGuidedBackprop

    sequence = feature_sequence(model)
    maps = []
    with warnings.catch_warnings():
        # captum warns at every call that it sets requires_grad and hooks the ReLUs; both are expected here
        warnings.simplefilter("ignore")
        for point in cut_points(model):
            layer = sequence[point.position][1]
            gbp = NeuronGuidedBackprop(model, layer)
            maps.append(gbp.attribute(probes, neuron_selector=_sum_per_example).detach().cpu())
    return torch.stack(maps, dim=1)


def baseline_ssim_pairs(images: np.ndarray, jobs: list[tuple[int, int, int]]) -> list[float]:
    """scikit-image SSIM for each (image n, cut point i, cut point j) job, one call per pair."""
    from skimage.metrics import structural_similarity

    return [
        float(structural_similarity(images[n, i], images[n, j], channel_axis=0, data_range=DATA_RANGE))
        for n, i, j in jobs
    ]


def all_jobs(n: int, layers: int) -> list[tuple[int, int, int]]:
    return [(k, i, j) for i in range(layers) for j in range(i + 1, layers) for k in range(n)]


def run_baseline(
    model: torch.nn.Module, probes: torch.Tensor, device: torch.device, sample: int, dtype: str, seed: int
) -> dict:
    with PeakMemory() as memory:
        result = _run_baseline(model, probes, device, sample, dtype, seed)
    result.update(peak_added=memory.added, peak=memory.peak)
    result["total"] = result["gbp"] + result["norm"] + result["ssim"]
    return result


def _run_baseline(
    model: torch.nn.Module, probes: torch.Tensor, device: torch.device, sample: int, dtype: str, seed: int
) -> dict:
    t0 = now(device)
    raw = baseline_gbp(model, probes)
    t1 = now(device)
    images = map_images(raw)
    t2 = now(device)
    arr = images.numpy().astype(dtype)
    n, layers = arr.shape[:2]
    jobs = all_jobs(n, layers)
    result = {"gbp": t1 - t0, "norm": t2 - t1, "images": images, "ssim_calls": len(jobs)}
    if sample and sample < len(jobs):
        rng = np.random.default_rng(seed)
        picked = [jobs[k] for k in sorted(rng.choice(len(jobs), size=sample, replace=False))]
        t3 = time.perf_counter()
        values = baseline_ssim_pairs(arr, picked)
        t4 = time.perf_counter()
        result.update(
            ssim=(t4 - t3) * len(jobs) / len(picked),
            ssim_measured=t4 - t3,
            sampled_jobs=picked,
            sampled_values=values,
            matrix=None,
            curve=None,
            extrapolated=True,
        )
        return result
    t3 = time.perf_counter()
    values = baseline_ssim_pairs(arr, jobs)
    sums = np.zeros((layers, layers))
    for (_, i, j), v in zip(jobs, values):
        sums[i, j] += v
    upper = sums / n
    matrix = upper + upper.T + np.eye(layers)
    curve = cut_curve(matrix)
    t4 = time.perf_counter()
    result.update(ssim=t4 - t3, matrix=matrix, curve=curve, extrapolated=False)
    return result


# ------------------------------------------------------------------------------------------------
# Checks
# ------------------------------------------------------------------------------------------------


def check(ours: dict, base: dict, tolerance: float) -> dict:
    """Max differences between the two sides; ``ok`` when the compared quantity is within ``tolerance``."""
    out = {"map_images_max_abs_diff": float((ours["images"] - base["images"]).abs().max())}
    if not base["extrapolated"]:
        out["matrix_max_abs_diff"] = float(np.abs(ours["matrix"] - base["matrix"]).max())
        out["curve_max_abs_diff"] = float(np.abs(ours["curve"] - base["curve"]).max())
        out["compared"] = "cut curve"
        out["ok"] = out["curve_max_abs_diff"] <= tolerance
        return out
    # Extrapolated: no full baseline matrix exists; compare each sampled skimage value with our SSIM of
    # the same single-image pair (similarity_matrix of that image's two maps).
    worst = 0.0
    for (n, i, j), value in zip(base["sampled_jobs"], base["sampled_values"]):
        pair = ours["images"][n : n + 1, [i, j]]
        worst = max(worst, abs(float(similarity_matrix(pair, data_range=DATA_RANGE)[0, 1]) - value))
    out["sampled_ssim_max_abs_diff"] = worst
    out["compared"] = "sampled SSIM values (no full baseline curve when extrapolating)"
    out["ok"] = worst <= tolerance
    return out


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------


def probe_images(image_size: int, count: int, seed: int) -> torch.Tensor:
    dataset = load_dataset("textures", image_size=image_size)
    val = dataset.val
    if count > len(val):
        raise SystemExit(f"--probes {count} is more than the textures validation split holds ({len(val)})")
    per_class = math.ceil(count / dataset.num_classes)
    idx = stratified_sample(val.labels, per_class, count, seed)
    mean, std = dataset_statistics(dataset.train)
    return normalise(val.images[idx], torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1))


def summarise(times: list[float]) -> dict:
    return {"best": min(times), "median": statistics.median(times), "all": times}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model, probes, device, rule, others = setup(args)
    layers = len(cut_points(model))
    del probes
    calls = args.probes * layers * (layers - 1) // 2
    extrapolating = bool(args.baseline_ssim_sample) and args.baseline_ssim_sample < calls

    print("layercut analyze benchmark — ours vs captum per cut point + scikit-image SSIM pair by pair")
    print(environment.describe(device))
    print(
        f"  arch {args.arch} (seeded random init, eval mode; weights do not change the work) | image {args.image_size} px"
        f" | probes {args.probes} (textures val) | cut points {layers} | our GBP batch {args.batch_size or 'the stage default'}"
    )
    print(
        f"  GBP rule (ours): {rule}"
        + (
            f" — the network also has {', '.join(others)}, which captum does not guide"
            if others
            else " — a ReLU-only network: every rule gives the same map"
        )
    )
    print(
        f"  SSIM: data_range {DATA_RANGE}; baseline = {calls} skimage calls ({layers * (layers - 1) // 2} pairs x"
        f" {args.probes} images, {args.baseline_ssim_dtype})"
        + (f"; EXTRAPOLATED from {args.baseline_ssim_sample} sampled calls" if extrapolating else "; all computed")
    )
    print(
        f"  repeats {args.repeats} per side, each in a fresh process after an untimed warm-up; the table shows the best (minimum) run,"
        " medians are in --json"
    )
    print(
        "  map normalisation is our map_images on both sides (timed separately, counted in both totals); ours also"
        " writes gbp_maps.npz in that row, as the analyze stage does"
    )
    print()

    ours_runs, base_runs = [], []
    for _ in range(args.repeats):  # interleaved, so slow phases of a busy machine hit both sides alike
        ours_runs.append(in_child("ours", args, extrapolating))
        if not args.skip_baseline:
            base_runs.append(in_child("baseline", args, extrapolating))

    parts = ("gbp", "norm", "ssim", "total")
    ours_t = {k: summarise([r[k] for r in ours_runs]) for k in parts}
    base_t = {k: summarise([r[k] for r in base_runs]) for k in parts} if base_runs else None
    mib = 1024**2
    memory = {
        "ours_peak_added_mib": max(r["peak_added"] for r in ours_runs) / mib,
        "ours_peak_mib": max(r["peak"] for r in ours_runs) / mib,
        "ours_estimated_peak_mib": ours_runs[-1]["estimated_peak"] / mib,
        "ours_gbp_batch": ours_runs[-1]["batch_size"],
    }
    if base_runs:
        memory["baseline_peak_added_mib"] = max(r["peak_added"] for r in base_runs) / mib
        memory["baseline_peak_mib"] = max(r["peak"] for r in base_runs) / mib

    print(f"{'seconds (best of ' + str(args.repeats) + ')':<26}{'ours':>10}{'baseline':>12}{'speed-up':>11}")
    ssim_note = " (extrapolated)" if extrapolating else ""
    speedup: dict[str, float] = {}
    for label, key, note in (
        ("GBP", "gbp", ""),
        ("map normalisation (+npz)", "norm", ""),
        ("SSIM + curve", "ssim", ssim_note),
        ("total", "total", ssim_note),
    ):
        if base_t is None:
            print(f"{label:<26}{ours_t[key]['best']:>10.3f}{'—':>12}")
            continue
        speedup[key] = base_t[key]["best"] / max(ours_t[key]["best"], 1e-12)
        sp = f"{speedup[key]:.2f}x" if key != "norm" else ""
        print(f"{label:<26}{ours_t[key]['best']:>10.3f}{base_t[key]['best']:>12.3f}{sp:>11}{note}")
    print()
    print(
        f"peak memory above the start: ours {memory['ours_peak_added_mib']:,.0f} MiB (GBP batch "
        f"{memory['ours_gbp_batch']}; the plan estimated a peak of {memory['ours_estimated_peak_mib']:,.0f} MiB, "
        f"measured {memory['ours_peak_mib']:,.0f} MiB)"
        + (
            f"; baseline {memory['baseline_peak_added_mib']:,.0f} MiB (peak {memory['baseline_peak_mib']:,.0f} MiB)"
            if base_runs
            else ""
        )
    )
    result: dict = {"ok": True, "compared": "nothing (--skip-baseline)"}
    if base_runs:
        target = TARGET_GPU if device.type == "cuda" else TARGET_CPU
        result = check(ours_runs[-1], base_runs[-1], args.tolerance)
        verdict = "meets" if speedup["total"] >= target else "BELOW"
        where = "a GPU" if device.type == "cuda" else "a 2-core CPU (vgg16, 64 px, 32 probes)"
        print(f"total speed-up {speedup['total']:.2f}x — target >= {target:g}x on {where}: {verdict} target")
        for key in (
            "curve_max_abs_diff",
            "matrix_max_abs_diff",
            "sampled_ssim_max_abs_diff",
            "map_images_max_abs_diff",
        ):
            if key in result:
                print(f"  {key.replace('_', ' ')}: {result[key]:.3g}")
        print(f"check ({result['compared']}) within {args.tolerance:g}: {'OK' if result['ok'] else 'FAILED'}")

    if args.json:
        payload = {
            **environment.record("analyze", device, args),
            "cut_points": layers,
            "gbp_rule": rule,
            "ssim_calls": calls,
            "ssim_extrapolated": extrapolating,
            "timing": "best (minimum) of repeats is headline; median and all runs kept",
            "ours_seconds": ours_t,
            "baseline_seconds": base_t,
            "speedup_best": speedup,
            "speedup_median": {
                k: base_t[k]["median"] / max(ours_t[k]["median"], 1e-12) for k in ("gbp", "ssim", "total")
            }
            if base_t
            else {},
            "memory": memory,
            "check": result,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2))
        print(f"wrote {args.json}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
