"""Seeded, stratified splits: carving val/test out of train per class, and sampling probe images per class.

A split depends only on the labels and the seed (each class draws from a generator seeded by
``(seed, class)``), so the same data and seed always give the same split.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from layercut.contracts.errors import DataError, LayercutError
from layercut.stages.data.types import SPLITS


def stratified_carve(
    labels: np.ndarray, fractions: dict[str, float], seed: int, classes: list[str]
) -> dict[str, np.ndarray]:
    """Split indices of ``labels`` per class: each named split gets round(n·fraction) (at least one), train the rest.

    Every class lands in every split with a positive fraction; a class with too few images raises ``DataError``.
    """
    active = {s: f for s, f in fractions.items() if f > 0}
    parts: dict[str, list[np.ndarray]] = {s: [] for s in ("train", *fractions)}
    for label, name in enumerate(classes):
        members = np.flatnonzero(labels == label)
        n = len(members)
        needed = len(active) + 1
        if n == 0:
            raise DataError(f"class {name!r} has no images to split")
        if n < needed:
            wording = " and ".join(f"{s}_fraction={f}" for s, f in active.items())
            raise DataError(
                f"class {name!r} has only {n} image(s), but with {wording} each class needs at least {needed} "
                f"(one for train and one for each of {', '.join(active)}); add images to {name!r}, remove it, "
                "or set the fraction to 0"
            )
        counts = {s: max(1, math.floor(n * f + 0.5)) for s, f in active.items()}
        while sum(counts.values()) >= n:  # keep at least one training image
            largest = max(counts, key=lambda s: counts[s])
            counts[largest] -= 1
        rng = np.random.default_rng([seed, label])
        order = members[rng.permutation(n)]
        start = 0
        for split in fractions:
            k = counts.get(split, 0)
            parts[split].append(order[start : start + k])
            start += k
        parts["train"].append(order[start:])
    return {s: np.sort(np.concatenate(chunks)) if chunks else np.zeros(0, np.int64) for s, chunks in parts.items()}


def assign_splits(
    labels: np.ndarray,
    given: np.ndarray,
    given_splits: list[str],
    classes: list[str],
    seed: int,
    val_fraction: float,
    test_fraction: float,
    warnings: list[str],
) -> tuple[dict[str, np.ndarray], dict]:
    """Indices of each split: given splits are kept, missing ones are carved (seeded, stratified) out of train.

    ``given`` holds each image's given split as an index into ``SPLITS`` (-1: not split); notes about given
    splits that lack a class are appended to ``warnings``. Returns the indices and a json-able description.
    """
    if not given_splits:
        parts = stratified_carve(labels, {"val": val_fraction, "test": test_fraction}, seed, classes)
        info = {
            "method": "seeded-stratified",
            "seed": seed,
            "val_fraction": val_fraction,
            "test_fraction": test_fraction,
        }
        return parts, info
    pool = np.flatnonzero(given == 0)
    wanted = {s: f for s, f in (("val", val_fraction), ("test", test_fraction)) if s not in given_splits}
    carved = stratified_carve(labels[pool], wanted, seed, classes) if wanted else {"train": np.arange(len(pool))}
    parts = {"train": pool[carved["train"]]}
    for split in ("val", "test"):
        if split in given_splits:
            parts[split] = np.flatnonzero(given == SPLITS.index(split))
        else:
            parts[split] = pool[carved[split]]
    for split in given_splits:
        if split == "train":
            continue
        present = set(labels[parts[split]].tolist())
        missing = [c for i, c in enumerate(classes) if i not in present]
        if missing:
            warnings.append(f"the given {split} split has no images of class(es) {', '.join(missing)}")
    info = {
        "method": "given" if not wanted else "given+carved",
        "given": list(given_splits),
        "seed": seed,
        "carved": {s: {"from": "train", "fraction_of_train": f} for s, f in wanted.items()},
    }
    return parts, info


def stratified_sample(labels: torch.Tensor, per_class: int, max_total: int, seed: int) -> torch.Tensor:
    """Seeded indices of up to ``per_class`` images of every class, at most ``max_total`` in all, sorted.

    When the cap bites, classes are taken round-robin so every class stays represented as far as possible.
    """
    if per_class < 1 or max_total < 1:
        raise LayercutError(f"per_class and max_total must be at least 1, got {per_class} and {max_total}")
    values = labels.detach().cpu().numpy().astype(np.int64)
    rng = np.random.default_rng(seed)
    picks = [rng.permutation(np.flatnonzero(values == c))[:per_class] for c in np.unique(values)]
    chosen: list[int] = []
    for rank in range(per_class):
        for pick in picks:
            if rank < len(pick) and len(chosen) < max_total:
                chosen.append(int(pick[rank]))
    return torch.tensor(sorted(chosen), dtype=torch.int64)
