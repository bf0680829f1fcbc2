"""Depth probes: how well a linear classifier reads the classes from each cut point's pooled features.

The training images (a class-balanced sample) and the validation images go through the network once, with no
backward pass. Each cut point's output is averaged over its spatial positions — exactly what the slim model's new
head sees — and a linear classifier is fitted on the training vectors and scored on the validation ones. Its
validation accuracy per cut point is the *probe curve*: a cheap estimate, before any retraining, of how deep a cut
must be to keep the classes apart. The auto cut retrains the candidates it points to.

The classifier is scikit-learn's multinomial ``LogisticRegression`` (lbfgs, L2 with ``C=1``) on standardised
features: a convex fit solved to convergence, with no learning rate or epochs to tune, deterministic, and a second
or two at these sizes (≤ a few thousand images × ≤ 2,048 features), where a torch linear layer trained for a few
epochs would add settings whose choice changes the curve.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from layercut.contracts.errors import LayercutError
from layercut.contracts.results import DepthProbe, DepthProbes, DepthProbeSeconds
from layercut.stages.cutpoints import cut_points, forward_features
from layercut.stages.data import Split, stratified_sample
from layercut.stages.progress import SILENT, Reporter
from layercut.stages.training import normalise, predict

METHOD = (
    "scikit-learn LogisticRegression (multinomial, lbfgs, C=1, up to 1000 iterations) on standardised, "
    "globally average-pooled cut-point features; fitted on training images, scored on validation images"
)
STAGE = "depth probes"
FEATURE_SHARE = 0.6
"""The part of the probes' progress that the forward pass takes (the rest: one fit per cut point)."""


@dataclass(frozen=True)
class PooledFeatures:
    """Per cut point (by index), one pooled feature vector per image, on the CPU."""

    features: dict[int, np.ndarray]
    labels: np.ndarray


def pool(output: torch.Tensor) -> torch.Tensor:
    """One vector per image: the mean over spatial positions of an (N, C, H, W) output; (N, C) is kept as is."""
    if output.dim() == 4:
        return output.mean(dim=(2, 3))
    if output.dim() == 2:
        return output
    raise LayercutError(f"a cut point's output has shape {tuple(output.shape)}; expected (N, C, H, W) or (N, C)")


@torch.no_grad()
def pooled_features(
    model: nn.Module,
    split: Split,
    indices: torch.Tensor,
    mean: list[float],
    std: list[float],
    device: torch.device,
    batch_size: int = 64,
    reporter: Reporter = SILENT,
) -> PooledFeatures:
    """Run the chosen images of ``split`` through the feature sequence once and pool every cut point's output."""
    was_training = model.training
    model.eval()
    mean_t = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, -1, 1, 1)
    collected: dict[int, list[torch.Tensor]] = {}
    try:
        for start in range(0, len(indices), batch_size):
            reporter.update(STAGE, start / max(len(indices), 1), f"features of image {start + 1}/{len(indices)}")
            batch = split.images[indices[start : start + batch_size]].to(device)
            for index, output in forward_features(model, normalise(batch, mean_t, std_t)).items():
                collected.setdefault(index, []).append(pool(output).float().cpu())
    finally:
        model.train(was_training)
    features = {index: torch.cat(parts).numpy() for index, parts in collected.items()}
    return PooledFeatures(features, split.labels[indices].numpy())


def probe_accuracy(
    train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray
) -> tuple[float, float]:
    """(training, validation) accuracy of a logistic regression fitted on standardised training features."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(train_y)) < 2:
        raise LayercutError("the depth probes need training images of at least two classes")
    classifier = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # 1000 lbfgs steps are plenty; the last one is used
        classifier.fit(train_x.astype(np.float64), train_y)
    return (
        float(classifier.score(train_x.astype(np.float64), train_y)),
        float(classifier.score(val_x.astype(np.float64), val_y)),
    )


def depth_probes(
    model: nn.Module,
    train: Split,
    val: Split,
    mean: list[float],
    std: list[float],
    device: torch.device,
    *,
    max_train_images: int = 2000,
    seed: int = 0,
    batch_size: int = 64,
    reporter: Reporter = SILENT,
) -> DepthProbes:
    """The probe curve of ``model``: per cut point, the validation accuracy of a linear classifier fitted on the
    pooled features of up to ``max_train_images`` training images (class-balanced) and scored on ``val``."""
    classes = int(train.labels.max().item()) + 1 if len(train.labels) else 0
    if classes < 2 or len(val.labels) == 0:
        raise LayercutError("the depth probes need training images of at least two classes and validation images")
    per_class = -(-max_train_images // classes)
    train_indices = stratified_sample(train.labels, per_class, max_train_images, seed)
    val_indices = torch.arange(len(val.labels))
    started = time.perf_counter()
    features_reporter = reporter.scaled(0.0, FEATURE_SHARE)
    train_share = len(train_indices) / (len(train_indices) + len(val_indices))
    train_features = pooled_features(
        model, train, train_indices, mean, std, device, batch_size, features_reporter.scaled(0.0, train_share)
    )
    val_features = pooled_features(
        model, val, val_indices, mean, std, device, batch_size, features_reporter.scaled(train_share, 1.0)
    )
    feature_seconds = time.perf_counter() - started

    started = time.perf_counter()
    points = cut_points(model)
    fit_reporter = reporter.scaled(FEATURE_SHARE, 1.0)
    probes = []
    for point in points:
        fit_reporter.update(STAGE, point.index / len(points), f"fitting the probe at {point.name}")
        train_x, val_x = train_features.features[point.index], val_features.features[point.index]
        train_accuracy, val_accuracy = probe_accuracy(train_x, train_features.labels, val_x, val_features.labels)
        probes.append(
            DepthProbe(
                index=point.index,
                name=point.name,
                features=int(train_x.shape[1]),
                train_accuracy=train_accuracy,
                val_accuracy=val_accuracy,
            )
        )
    fit_reporter.update(STAGE, 1.0, "depth probes done")
    logits = predict(model, val, mean, std, device)
    return DepthProbes(
        method=METHOD,
        train_images=len(train_indices),
        val_images=len(val_indices),
        base_val_accuracy=float((logits.argmax(dim=1) == val.labels).float().mean()),
        points=probes,
        seconds=DepthProbeSeconds(features=feature_seconds, fit=time.perf_counter() - started),
    )


@torch.no_grad()
def fit_head(
    model: nn.Module,
    train: Split,
    mean: list[float],
    std: list[float],
    device: torch.device,
    *,
    max_images: int = 2000,
    seed: int = 0,
    batch_size: int = 64,
    reporter: Reporter = SILENT,
) -> float:
    """Start a slim model's new head where the depth probe ends: fit the logistic regression of ``probe_accuracy`` on
    the pooled features the head reads (a class-balanced sample of up to ``max_images`` training images) and copy it,
    with the standardisation folded in, into the head's linear layer. Fine-tuning then starts from a head that
    already reads the classes (linear probing, then fine-tuning; Kumar et al., ICLR 2022) instead of a random one,
    which a short retraining budget cannot always fix at shallow cuts. Returns the probe's training accuracy."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    classifier: nn.Linear = model.classifier
    body: nn.Module = model.body
    classes = classifier.out_features
    indices = stratified_sample(train.labels, -(-max_images // classes), max_images, seed)
    was_training = model.training
    model.eval()
    mean_t = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, -1, 1, 1)
    parts = []
    try:
        for start in range(0, len(indices), batch_size):
            reporter.update("head", start / max(len(indices), 1), "fitting the new head on pooled features")
            batch = train.images[indices[start : start + batch_size]].to(device)
            parts.append(pool(body(normalise(batch, mean_t, std_t))).double().cpu())
    finally:
        model.train(was_training)
    features, labels = torch.cat(parts).numpy(), train.labels[indices].numpy()
    if len(np.unique(labels)) < 2:
        raise LayercutError("fitting the head needs training images of at least two classes")
    scaler = StandardScaler().fit(features)
    regression = LogisticRegression(C=1.0, max_iter=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        regression.fit(scaler.transform(features), labels)
    coef, intercept = regression.coef_, regression.intercept_
    if coef.shape[0] == 1:  # two classes: scikit-learn keeps one row (class 1 against class 0)
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
    weight = np.zeros((classes, features.shape[1]))
    bias = np.full(classes, float(intercept.min()) - 10.0)  # a class missing from the sample is never predicted
    for row, label in enumerate(regression.classes_):
        weight[label] = coef[row] / scaler.scale_
        bias[label] = intercept[row] - float((coef[row] * scaler.mean_ / scaler.scale_).sum())
    classifier.weight.copy_(torch.from_numpy(weight).to(classifier.weight))
    classifier.bias.copy_(torch.from_numpy(bias).to(classifier.bias))
    reporter.update("head", 1.0, "head fitted")
    return float(regression.score(scaler.transform(features), labels))
