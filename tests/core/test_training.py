"""Training keeps the best validation epoch, stops early, is seeded, and evaluates without touching the model's mode."""

import torch

from layercut.contracts.configs import TrainConfig
from layercut.stages.architectures import build_model
from layercut.stages.data import Split
from layercut.stages.progress import Reporter
from layercut.stages.training import predict, train_model


def _separable_split(n: int, seed: int) -> Split:
    """Two classes that differ in brightness: learnable in a couple of epochs."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    images = (torch.rand(n, 3, 32, 32, generator=g) * 80 + labels.view(-1, 1, 1, 1) * 150).to(torch.uint8)
    return Split(images=images, labels=labels, sources=[f"synthetic:{i}" for i in range(n)])


MEAN, STD = [0.45] * 3, [0.3] * 3


def test_training_learns_and_reports_progress() -> None:
    train, val = _separable_split(64, 0), _separable_split(32, 1)
    updates = []
    model = build_model("smallcnn", 2)
    result = train_model(
        model,
        train,
        val,
        MEAN,
        STD,
        TrainConfig(epochs=3, batch_size=16, patience=None, device="cpu"),
        Reporter(callback=lambda stage, f, msg: updates.append((stage, f))),
    )
    assert len(result.history) == 3
    assert result.best_val_accuracy >= 0.9
    assert updates[-1] == ("train", 1.0)
    assert not model.training
    logits = predict(model, val, MEAN, STD)
    assert float((logits.argmax(1) == val.labels).float().mean()) == result.best_val_accuracy


def test_best_epoch_weights_are_kept_and_early_stopping_ends_training() -> None:
    train, val = _separable_split(64, 0), _separable_split(32, 1)
    model = build_model("smallcnn", 2)
    # a huge learning rate makes later epochs worse than the best one
    config = TrainConfig(epochs=12, batch_size=16, lr=0.5, optimizer="sgd", patience=2, schedule="none", device="cpu")
    result = train_model(model, train, val, MEAN, STD, config)
    accuracies = [row["val_accuracy"] for row in result.history]
    assert result.best_val_accuracy == max(accuracies)
    if result.stopped_early:
        assert len(result.history) < 12
        assert len(result.history) - result.best_epoch == 2
    logits = predict(model, val, MEAN, STD)
    assert float((logits.argmax(1) == val.labels).float().mean()) == result.best_val_accuracy


def test_training_is_reproducible_for_a_seed() -> None:
    train, val = _separable_split(48, 0), _separable_split(16, 1)
    losses = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_model("smallcnn", 2)
        torch.rand(
            int(torch.randint(1, 100, (1,)))
        )  # disturb the global RNG: train_model reseeds, so this must not matter
        result = train_model(model, train, val, MEAN, STD, TrainConfig(epochs=1, batch_size=16, seed=7, device="cpu"))
        losses.append(result.history[0]["train_loss"])
    assert losses[0] == losses[1]
