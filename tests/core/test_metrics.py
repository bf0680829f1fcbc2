"""Metrics against scikit-learn on random and hand-made predictions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from layercut.stages.metrics import classification_report, roc_curves, to_probabilities

CLASSES4 = ["cat", "dog", "owl", "fox"]


def _sklearn_check(report: dict, probs: np.ndarray, y: np.ndarray) -> None:
    """Every number in the report equals scikit-learn's."""
    k = probs.shape[1]
    pred = probs.argmax(axis=1)
    assert report["accuracy"] == pytest.approx(accuracy_score(y, pred))
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y, pred, average=average, zero_division=0)
        assert report[f"{average}_precision"] == pytest.approx(p)
        assert report[f"{average}_recall"] == pytest.approx(r)
        assert report[f"{average}_f1"] == pytest.approx(f)
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=list(range(k)), average=None, zero_division=0)
    for i, name in enumerate(report["classes"]):
        row = report["per_class"][name]
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((p[i], r[i], f[i]))
        assert row["support"] == s[i]
    assert report["confusion_matrix"] == confusion_matrix(y, pred, labels=list(range(k))).tolist()
    present = [c for c in range(k) if 0 < (y == c).sum() < len(y)]
    per_class_auc = {c: roc_auc_score((y == c).astype(int), probs[:, c]) for c in present}
    for c in range(k):
        got = report["roc_auc_per_class"][report["classes"][c]]
        assert got is None if c not in present else got == pytest.approx(per_class_auc[c])
    assert report["roc_auc_macro"] == pytest.approx(np.mean(list(per_class_auc.values())))
    json.dumps(report)  # plain types only


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_predictions_match_sklearn(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    n, k = 300, 5
    labels = torch.randint(0, k, (n,), generator=g)
    logits = torch.randn(n, k, generator=g) + 1.5 * torch.nn.functional.one_hot(labels, k)
    report = classification_report(logits, labels, [f"c{i}" for i in range(k)])
    probs = torch.softmax(logits.double(), dim=1).numpy()
    _sklearn_check(report, probs, labels.numpy())
    y = labels.numpy()
    assert report["roc_auc_macro"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert report["scores_were"].startswith("logits")
    assert report["n"] == n and report["roc_auc_undefined_classes"] == []


def test_hand_made_with_unpredicted_and_absent_class() -> None:
    # class 3 ("fox") never appears in the labels and is never predicted; class 2 is predicted once.
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    preds = torch.tensor([0, 1, 1, 1, 0, 2, 0, 1])
    probs = torch.nn.functional.one_hot(preds, 4).double() * 0.6 + 0.1
    probs[:, 3] += torch.linspace(0.0, 0.07, 8, dtype=torch.float64)  # a non-trivial score column for "fox"
    probs = probs / probs.sum(dim=1, keepdim=True)
    report = classification_report(probs, labels, CLASSES4)
    _sklearn_check(report, probs.numpy(), labels.numpy())
    # by hand: 6 of 8 right; cat precision 2/3 (one owl predicted as cat), dog recall 3/3
    assert report["accuracy"] == pytest.approx(6 / 8)
    assert report["per_class"]["cat"]["precision"] == pytest.approx(2 / 3)
    assert report["per_class"]["dog"]["recall"] == pytest.approx(1.0)
    assert report["per_class"]["fox"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0, "predicted": 0}
    assert report["macro_averaged_over"] == ["cat", "dog", "owl"]
    assert report["roc_auc_per_class"]["fox"] is None
    assert report["roc_auc_undefined_classes"] == ["fox"]
    assert report["scores_were"] == "probabilities"
    assert report["most_confused"] == [  # equal counts: the larger share of the true class first
        {"true": "owl", "predicted": "cat", "count": 1, "share_of_true": pytest.approx(1 / 2)},
        {"true": "cat", "predicted": "dog", "count": 1, "share_of_true": pytest.approx(1 / 3)},
    ]


def test_class_predicted_but_absent_from_labels_counts_in_macro() -> None:
    labels = torch.tensor([0, 1, 1, 0, 1])
    logits = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 0, 1]), 3).float() * 4
    report = classification_report(logits, labels, ["a", "b", "c"])
    _sklearn_check(report, torch.softmax(logits.double(), 1).numpy(), labels.numpy())
    assert report["per_class"]["c"]["precision"] == 0.0 and report["per_class"]["c"]["predicted"] == 1
    assert report["macro_averaged_over"] == ["a", "b", "c"]


def test_most_confused_keeps_top_five_nonzero() -> None:
    k = 4
    labels = torch.arange(k).repeat_interleave(10)
    preds = labels.clone()
    preds[0:4] = 1  # cat→dog 4
    preds[10:13] = 2  # dog→owl 3
    preds[20:22] = 3  # owl→fox 2
    preds[30] = 0  # fox→cat 1
    preds[31] = 1  # fox→dog 1
    preds[32] = 2  # fox→owl 1 (6th pair: dropped)
    report = classification_report(torch.nn.functional.one_hot(preds, k).double(), labels, CLASSES4)
    pairs = [(c["true"], c["predicted"], c["count"]) for c in report["most_confused"]]
    assert pairs[:3] == [("cat", "dog", 4), ("dog", "owl", 3), ("owl", "fox", 2)]
    assert len(pairs) == 5 and all(c == 1 for *_, c in pairs[3:])
    assert report["most_confused"][0]["share_of_true"] == pytest.approx(0.4)


def test_perfect_predictions_have_no_confusions() -> None:
    labels = torch.tensor([0, 1, 2, 1])
    report = classification_report(torch.nn.functional.one_hot(labels, 3).double(), labels, ["a", "b", "c"])
    assert report["accuracy"] == 1.0 and report["macro_f1"] == 1.0 and report["most_confused"] == []
    assert report["roc_auc_macro"] == pytest.approx(1.0)


def test_single_class_in_labels_gives_null_macro_auc() -> None:
    labels = torch.zeros(4, dtype=torch.long)
    report = classification_report(torch.randn(4, 3), labels, ["a", "b", "c"])
    assert report["roc_auc_macro"] is None and report["roc_auc_undefined_classes"] == ["a", "b", "c"]


def test_roc_curves_match_sklearn() -> None:
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 3, (200,), generator=g)
    labels[labels == 2] = 1  # class 2 absent: no curve for it
    probs = torch.softmax(torch.randn(200, 3, generator=g, dtype=torch.float64), dim=1)
    curves = roc_curves(probs, labels, ["a", "b", "c"])
    assert set(curves) == {"a", "b"}
    for c, name in enumerate(["a", "b"]):
        fpr, tpr = curves[name]
        area = float(np.trapezoid(tpr, fpr))
        assert area == pytest.approx(roc_auc_score((labels.numpy() == c).astype(int), probs[:, c].numpy()))
        sk_fpr, sk_tpr, _ = roc_curve((labels.numpy() == c).astype(int), probs[:, c].numpy(), drop_intermediate=False)
        np.testing.assert_allclose(fpr, sk_fpr)
        np.testing.assert_allclose(tpr, sk_tpr)


def test_to_probabilities_and_bad_inputs() -> None:
    p = torch.tensor([[0.2, 0.8], [0.5, 0.5]])
    assert torch.allclose(to_probabilities(p), p.double())
    assert torch.allclose(to_probabilities(torch.tensor([[0.0, 0.0]])), torch.tensor([[0.5, 0.5]], dtype=torch.float64))
    with pytest.raises(ValueError, match="class names"):
        classification_report(torch.randn(3, 2), torch.tensor([0, 1, 0]), ["a", "b", "c"])
    with pytest.raises(ValueError, match="labels"):
        classification_report(torch.randn(3, 2), torch.tensor([0, 1]), ["a", "b"])
    with pytest.raises(ValueError, match="0..1"):
        classification_report(torch.randn(2, 2), torch.tensor([0, 2]), ["a", "b"])
