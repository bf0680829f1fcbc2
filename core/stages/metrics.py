"""Classification metrics for the train, retrain and compare stages (torchmetrics, multiclass).

Everything returned is plain Python (floats, ints, lists, ``None``) so it can go straight into JSON,
the job row and the report. Averaging follows torchmetrics and scikit-learn's defaults: a class that
is neither in the labels nor in the predictions is left out of macro averages; a class that is never
predicted counts with precision 0 (zero division gives 0, as sklearn's ``zero_division=0``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_auroc,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
    multiclass_roc,
)

TOP_CONFUSIONS = 5
PAIR_EXAMPLES = 4


def _check_inputs(scores: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> None:
    """Reject shapes that would give silently wrong metrics."""
    if scores.ndim != 2:
        raise ValueError(f"scores must be (N, K), got shape {tuple(scores.shape)}")
    if labels.ndim != 1 or labels.shape[0] != scores.shape[0]:
        raise ValueError(f"labels must be (N,) with N={scores.shape[0]}, got shape {tuple(labels.shape)}")
    if scores.shape[1] != len(classes):
        raise ValueError(f"scores have {scores.shape[1]} columns but {len(classes)} class names were given")
    if scores.shape[0] == 0:
        raise ValueError("no samples: metrics need at least one prediction")
    if len(classes) < 2:
        raise ValueError("classification metrics need at least two classes")
    if labels.min() < 0 or labels.max() >= len(classes):
        raise ValueError(f"labels must lie in 0..{len(classes) - 1}")


def _looks_like_probabilities(scores: torch.Tensor) -> bool:
    """True when every row is a probability vector (values in [0, 1] summing to 1)."""
    if scores.min() < 0 or scores.max() > 1:
        return False
    return bool(torch.allclose(scores.sum(dim=1), torch.ones(scores.shape[0], dtype=scores.dtype), atol=1e-3))


def to_probabilities(logits_or_probs: torch.Tensor) -> torch.Tensor:
    """Rows as probabilities: returned as they are if they already are, else softmax of the logits."""
    scores = logits_or_probs.detach().to("cpu", torch.float64)
    return scores if _looks_like_probabilities(scores) else torch.softmax(scores, dim=1)


def _floats(t: torch.Tensor) -> list[float]:
    return [float(v) for v in t.tolist()]


def _roc_auc(probs: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    """One-vs-rest ROC AUC per class and macro; null where a class has no positives or no negatives."""
    k = len(classes)
    counts = torch.bincount(labels, minlength=k)
    n = labels.shape[0]
    defined = [(0 < int(counts[c]) < n) for c in range(k)]
    with warnings.catch_warnings():  # torchmetrics warns about the classes we report as null below
        warnings.simplefilter("ignore", UserWarning)
        per = multiclass_auroc(probs, labels, k, average="none")
    per_class = {classes[c]: (float(per[c]) if defined[c] else None) for c in range(k)}
    present = [float(per[c]) for c in range(k) if defined[c]]
    return {
        "roc_auc_macro": (sum(present) / len(present)) if present else None,
        "roc_auc_per_class": per_class,
        "roc_auc_undefined_classes": [classes[c] for c in range(k) if not defined[c]],
        "roc_auc_note": (
            "one-vs-rest; classes absent from the labels (or making up all of them) have no ROC AUC and "
            "are reported as null and left out of the macro average"
        ),
    }


def _most_confused(matrix: list[list[int]], classes: list[str], top: int = TOP_CONFUSIONS) -> list[dict[str, Any]]:
    """The ``top`` largest off-diagonal cells (true → predicted), with their share of the true class."""
    cells = []
    for t, row in enumerate(matrix):
        support = sum(row)
        for p, count in enumerate(row):
            if t != p and count > 0:
                cells.append(
                    {"true": classes[t], "predicted": classes[p], "count": int(count), "share_of_true": count / support}
                )
    cells.sort(key=lambda c: (-c["count"], -c["share_of_true"], c["true"], c["predicted"]))
    return cells[:top]


def classification_report(logits_or_probs: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    """Accuracy, macro/weighted precision-recall-F1, confusion matrix, per-class report, ROC AUC, top confusions.

    ``logits_or_probs`` is (N, K): probability rows are used as given, anything else goes through softmax.
    """
    labels = labels.detach().to("cpu", torch.long)
    scores = logits_or_probs.detach().to("cpu", torch.float64)
    _check_inputs(scores, labels, classes)
    probs = to_probabilities(scores)
    k = len(classes)

    def avg(fn, average: str) -> torch.Tensor:
        return fn(probs, labels, k, average=average, zero_division=0)

    confusion = multiclass_confusion_matrix(probs, labels, k).tolist()
    precision, recall, f1 = (avg(fn, "none") for fn in (multiclass_precision, multiclass_recall, multiclass_f1_score))
    support = torch.bincount(labels, minlength=k).tolist()
    predicted = torch.bincount(probs.argmax(dim=1), minlength=k).tolist()
    report: dict[str, Any] = {
        "n": int(labels.shape[0]),
        "num_classes": k,
        "classes": list(classes),
        "scores_were": "probabilities" if _looks_like_probabilities(scores) else "logits (softmax applied)",
        "accuracy": float(multiclass_accuracy(probs, labels, k, average="micro")),
        "macro_precision": float(avg(multiclass_precision, "macro")),
        "macro_recall": float(avg(multiclass_recall, "macro")),
        "macro_f1": float(avg(multiclass_f1_score, "macro")),
        "weighted_precision": float(avg(multiclass_precision, "weighted")),
        "weighted_recall": float(avg(multiclass_recall, "weighted")),
        "weighted_f1": float(avg(multiclass_f1_score, "weighted")),
        "macro_averaged_over": [c for i, c in enumerate(classes) if support[i] + predicted[i] > 0],
        "confusion_matrix": [[int(v) for v in row] for row in confusion],
        "confusion_matrix_axes": "rows = true class, columns = predicted class (counts)",
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
                "predicted": int(predicted[i]),
            }
            for i, name in enumerate(classes)
        },
    }
    report.update(_roc_auc(probs, labels, classes))
    report["most_confused"] = _most_confused(report["confusion_matrix"], classes)
    return report


def roc_curves(
    probs: torch.Tensor, labels: torch.Tensor, classes: list[str]
) -> dict[str, tuple[list[float], list[float]]]:
    """One-vs-rest ROC curve ``(fpr, tpr)`` per class for the ROC plot; classes absent from the labels are left out."""
    labels = labels.detach().to("cpu", torch.long)
    scores = probs.detach().to("cpu", torch.float64)
    _check_inputs(scores, labels, classes)
    probs = to_probabilities(scores)
    k = len(classes)
    counts = torch.bincount(labels, minlength=k)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        fpr, tpr, _ = multiclass_roc(probs, labels, k)
    n = labels.shape[0]
    return {classes[c]: (_floats(fpr[c]), _floats(tpr[c])) for c in range(k) if 0 < int(counts[c]) < n}


@dataclass(frozen=True)
class ConfusedPair:
    """One off-diagonal cell of the confusion matrix: images of class ``true`` predicted as ``predicted``.

    ``examples`` are indices into the evaluated split: the most confident mistakes first when confidences
    were given, else in split order.
    """

    true: int
    predicted: int
    count: int
    share_of_true: float
    examples: list[int] = field(default_factory=list)


def _as_int_array(values: Sequence[int] | np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.int64).reshape(-1)


def confused_pairs(
    labels: Sequence[int] | np.ndarray | torch.Tensor,
    predictions: Sequence[int] | np.ndarray | torch.Tensor,
    num_classes: int,
    top: int = TOP_CONFUSIONS,
    examples: int = PAIR_EXAMPLES,
    confidences: Sequence[float] | np.ndarray | torch.Tensor | None = None,
) -> list[ConfusedPair]:
    """The ``top`` most frequent (true → predicted) mistakes with up to ``examples`` image indices each.

    Pairs are ordered by count, then by share of the true class (as ``most_confused``), then by class
    index; an empty list means there were no mistakes. ``confidences`` (the predicted class's probability
    per image) puts the most confident mistakes first among the examples.
    """
    truth, predicted = _as_int_array(labels), _as_int_array(predictions)
    if truth.shape != predicted.shape:
        raise ValueError(f"labels and predictions differ in length: {truth.shape[0]} vs {predicted.shape[0]}")
    if truth.size and (min(truth.min(), predicted.min()) < 0 or max(truth.max(), predicted.max()) >= num_classes):
        raise ValueError(f"labels and predictions must lie in 0..{num_classes - 1}")
    matrix = np.bincount(truth * num_classes + predicted, minlength=num_classes * num_classes)
    matrix = matrix.reshape(num_classes, num_classes)
    support = matrix.sum(axis=1)
    cells = [
        (int(matrix[t, p]), t, p) for t in range(num_classes) for p in range(num_classes) if t != p and matrix[t, p] > 0
    ]
    cells.sort(key=lambda c: (-c[0], -c[0] / support[c[1]], c[1], c[2]))
    if confidences is None:
        order = np.arange(truth.size)
    else:
        score = np.asarray(
            confidences.detach().cpu().numpy() if isinstance(confidences, torch.Tensor) else confidences,
            dtype=np.float64,
        ).reshape(-1)
        if score.shape != truth.shape:
            raise ValueError(f"confidences must have one value per image ({truth.size}), got {score.size}")
        order = np.argsort(-score, kind="stable")  # most confident first, split order on ties
    pairs = []
    for count, t, p in cells[: max(top, 0)]:
        hits = order[(truth[order] == t) & (predicted[order] == p)]
        pairs.append(
            ConfusedPair(
                true=t,
                predicted=p,
                count=count,
                share_of_true=count / int(support[t]),
                examples=[int(i) for i in hits[: max(examples, 0)]],
            )
        )
    return pairs
