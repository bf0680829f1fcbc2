"""Depth probes: a linear classifier on each cut point's pooled features, checked on a hand-built net whose classes
are linearly separable at its second cut point and not at its first, and against scikit-learn fed by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from layercut.contracts.errors import LayercutError
from layercut.stages.cutpoints import cut_points
from layercut.stages.data import Split
from layercut.stages.probes import depth_probes, pool, pooled_features
from layercut.stages.progress import Reporter
from layercut.testing.nets import xor_depth_net, xor_sign_images

MEAN, STD = [0.5, 0.5], [0.5, 0.5]


def split(n: int, seed: int) -> Split:
    images, labels = xor_sign_images(n, seed)
    return Split(images, labels, [f"xor:{i}" for i in range(n)])


def test_the_probe_curve_says_where_the_classes_become_linearly_separable() -> None:
    model = xor_depth_net()
    assert [p.name for p in cut_points(model)] == ["1", "3"]
    probes = depth_probes(model, split(400, 0), split(200, 1), MEAN, STD, torch.device("cpu"), max_train_images=400)
    shallow, deep = probes.points
    assert (shallow.name, deep.name, shallow.features, deep.features) == ("1", "3", 4, 2)
    assert deep.val_accuracy == 1.0 and deep.train_accuracy == 1.0
    assert shallow.val_accuracy < 0.8  # sign XOR: no linear classifier reads it
    assert probes.curve == [shallow.val_accuracy, deep.val_accuracy]
    assert (probes.train_images, probes.val_images) == (400, 200)
    assert probes.seconds.features >= 0 and probes.seconds.fit >= 0 and "LogisticRegression" in probes.method


def test_pooled_features_are_the_spatial_means_of_each_cut_point_and_match_one_by_one() -> None:
    model = xor_depth_net()
    data = split(10, 2)
    batched = pooled_features(model, data, torch.arange(10), MEAN, STD, torch.device("cpu"), batch_size=4)
    x = (data.images.float() / 255 - 0.5) / 0.5
    a, b = x[:, 0, 0, 0], x[:, 1, 0, 0]
    by_hand = torch.stack([a.clamp(min=0), (-a).clamp(min=0), b.clamp(min=0), (-b).clamp(min=0)], dim=1)
    np.testing.assert_allclose(batched.features[0], by_hand.numpy(), atol=1e-6)
    for i in range(10):
        one = pooled_features(model, data, torch.tensor([i]), MEAN, STD, torch.device("cpu"))
        for index in (0, 1):
            np.testing.assert_allclose(one.features[index][0], batched.features[index][i], atol=1e-6)


def test_the_probe_equals_scikit_learn_fitted_on_the_same_features() -> None:
    model = xor_depth_net()
    train, val = split(300, 3), split(100, 4)
    probes = depth_probes(model, train, val, MEAN, STD, torch.device("cpu"), max_train_images=300)
    features = pooled_features(model, train, torch.arange(300), MEAN, STD, torch.device("cpu"))
    val_features = pooled_features(model, val, torch.arange(100), MEAN, STD, torch.device("cpu"))
    for point in probes.points:
        reference = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        reference.fit(features.features[point.index].astype(np.float64), features.labels)
        expected = reference.score(val_features.features[point.index].astype(np.float64), val_features.labels)
        assert point.val_accuracy == pytest.approx(expected)


def test_the_training_images_are_capped_with_every_class_kept() -> None:
    probes = depth_probes(
        xor_depth_net(), split(400, 0), split(50, 1), MEAN, STD, torch.device("cpu"), max_train_images=60
    )
    assert probes.train_images == 60


def test_pool_refuses_an_output_it_cannot_reduce_to_one_vector_per_image() -> None:
    assert pool(torch.ones(3, 5)).shape == (3, 5) and pool(torch.ones(3, 5, 2, 2)).shape == (3, 5)
    with pytest.raises(LayercutError, match="expected"):
        pool(torch.ones(3, 5, 2))


def test_every_batch_is_a_cancellation_point() -> None:
    calls = []

    def cancel_on_third() -> bool:
        calls.append(1)
        return len(calls) >= 3

    from layercut.contracts.errors import Cancelled

    with pytest.raises(Cancelled):
        depth_probes(
            xor_depth_net(),
            split(200, 0),
            split(50, 1),
            MEAN,
            STD,
            torch.device("cpu"),
            batch_size=16,
            reporter=Reporter(should_cancel=cancel_on_third),
        )


@pytest.mark.parametrize("cut", [0, 1])
def test_fit_head_starts_the_slim_model_at_the_probe_it_fits(cut: int) -> None:
    from layercut.stages.probes import fit_head
    from layercut.stages.training import predict
    from layercut.stages.truncation import SlimNet

    base = xor_depth_net()
    point = cut_points(base)[cut]
    kept = [(name, module) for name, module in base.named_children()][: point.position + 1]
    slim = SlimNet(kept, [point.name], channels=(4, 2)[cut], num_classes=2).eval()
    train, val = split(300, 5), split(100, 6)
    train_accuracy = fit_head(slim, train, MEAN, STD, torch.device("cpu"), max_images=300)
    # the head is the logistic regression with the standardisation folded in: same predictions as scikit-learn
    features = pooled_features(base, val, torch.arange(100), MEAN, STD, torch.device("cpu")).features[cut]
    train_features = pooled_features(base, train, torch.arange(300), MEAN, STD, torch.device("cpu")).features[cut]
    reference = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(train_features, train.labels)
    slim_predictions = predict(slim, val, MEAN, STD).argmax(dim=1).numpy()
    np.testing.assert_array_equal(slim_predictions, reference.predict(features))
    assert train_accuracy == pytest.approx(reference.score(train_features, train.labels))
    if cut == 1:
        assert (slim_predictions == val.labels.numpy()).all()  # linearly separable there: right before any training
