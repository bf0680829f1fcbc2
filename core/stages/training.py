"""Training and evaluation of a classifier on in-memory image tensors.

Images arrive decoded once as uint8 tensors; batches are converted, augmented and normalised on
the training device, so there is no per-epoch decoding and no DataLoader worker overhead.
"""

from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from layercut.contracts.configs import TrainConfig, learning_rate
from layercut.stages.augment import augment_batch
from layercut.stages.data import Split
from layercut.stages.devices import resolve_device
from layercut.stages.progress import SILENT, Reporter


@dataclass
class TrainResult:
    history: list[dict]  # one row per epoch: losses, accuracies, learning rate, seconds
    best_epoch: int
    best_val_accuracy: float
    stopped_early: bool
    images_per_second: float
    device: str
    extra: dict = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def normalise(batch_uint8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) → float normalised with per-channel ``mean``/``std`` (given for [0, 1] images)."""
    return (batch_uint8.float().div_(255.0) - mean) / std


def _stats(values: list[float], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device).view(1, -1, 1, 1)


def _make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    lr = learning_rate(config)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay, nesterov=True)
    return torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)


def _make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int):
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, config.epochs * steps_per_epoch))
    if config.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=config.step_size * steps_per_epoch, gamma=config.gamma
        )
    return None


@torch.inference_mode()
def predict(
    model: nn.Module,
    split: Split,
    mean: list[float],
    std: list[float],
    device: str | torch.device = "cpu",
    batch_size: int = 128,
) -> torch.Tensor:
    """Logits of ``model`` for every image of ``split`` (float32, on the CPU); the model's mode is restored."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    mean_t, std_t = _stats(mean, device), _stats(std, device)
    outputs = []
    try:
        for start in range(0, len(split.labels), batch_size):
            batch = split.images[start : start + batch_size].to(device, non_blocking=True)
            outputs.append(model(normalise(batch, mean_t, std_t)).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(outputs) if outputs else torch.empty(0, 0)


def _epoch_batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Shuffled index batches; a trailing batch of one is dropped (BatchNorm cannot train on it)."""
    order = torch.randperm(n, generator=generator)
    batches = list(order.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches.pop()
    return batches


def train_model(
    model: nn.Module,
    train: Split,
    val: Split,
    mean: list[float],
    std: list[float],
    config: TrainConfig,
    reporter: Reporter = SILENT,
    stage: str = "train",
    keep_start: bool = False,
) -> TrainResult:
    """Train ``model`` in place; at the end it holds the weights of the epoch with the best validation accuracy.

    With ``keep_start`` the starting weights compete as epoch 0 (a slim model whose head was fitted before
    fine-tuning is never handed back worse than it started).

    Ties in validation accuracy go to the lower validation loss. Early stopping ends training after
    ``config.patience`` epochs without improvement. Mixed precision and channels_last apply on CUDA only.
    """
    seed_everything(config.seed)
    device = resolve_device(config.device)
    cuda = device.type == "cuda"
    memory_format = torch.channels_last if (cuda and config.channels_last) else torch.contiguous_format
    model.to(device=device, memory_format=memory_format)
    amp = cuda and config.amp
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    generator = torch.Generator().manual_seed(config.seed)
    augment_generator = torch.Generator(device=device).manual_seed(config.seed + 1)
    mean_t, std_t = _stats(mean, device), _stats(std, device)
    train_images = train.images.to(device)
    train_labels = train.labels.to(device)

    steps_per_epoch = len(_epoch_batches(len(train.labels), config.batch_size, torch.Generator().manual_seed(0)))
    optimizer = _make_optimizer(model, config)
    scheduler = _make_scheduler(optimizer, config, steps_per_epoch)
    total_steps = config.epochs * steps_per_epoch

    history: list[dict] = []
    best = (-1.0, math.inf)
    if keep_start:
        start_logits = predict(model, val, mean, std, device)
        best = (
            float((start_logits.argmax(1) == val.labels).float().mean()),
            float(nn.functional.cross_entropy(start_logits, val.labels)),
        )
    best_state = copy.deepcopy(model.state_dict())
    best_epoch, epochs_without_gain, stopped_early = 0, 0, False
    seen_images, train_seconds = 0, 0.0
    step = 0
    for epoch in range(1, config.epochs + 1):
        model.train()
        started = time.perf_counter()
        loss_sum, correct, count = 0.0, 0, 0
        for indices in _epoch_batches(len(train.labels), config.batch_size, generator):
            indices = indices.to(device)
            images = normalise(train_images[indices], mean_t, std_t)
            if config.augment:
                images = augment_batch(images, augment_generator)
            images = images.contiguous(memory_format=memory_format)
            labels = train_labels[indices]
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
                logits = model(images)
                loss = criterion(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if scheduler is not None:
                scheduler.step()
            loss_sum += float(loss.detach()) * len(labels)
            correct += int((logits.detach().argmax(1) == labels).sum())
            count += len(labels)
            step += 1
            reporter.update(
                stage, step / max(total_steps, 1), f"epoch {epoch}/{config.epochs} loss {loss_sum / count:.3f}"
            )
        if cuda:
            torch.cuda.synchronize()
        train_seconds += time.perf_counter() - started
        seen_images += count

        val_logits = predict(model, val, mean, std, device)
        val_loss = float(nn.functional.cross_entropy(val_logits, val.labels))
        val_accuracy = float((val_logits.argmax(1) == val.labels).float().mean())
        history.append(
            {
                "epoch": epoch,
                "train_loss": loss_sum / max(count, 1),
                "train_accuracy": correct / max(count, 1),
                "val_loss": val_loss,
                "val_accuracy": val_accuracy,
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": time.perf_counter() - started,
            }
        )
        if (val_accuracy, -val_loss) > (best[0], -best[1]):
            best = (val_accuracy, val_loss)
            best_state = copy.deepcopy(model.state_dict())
            best_epoch, epochs_without_gain = epoch, 0
        else:
            epochs_without_gain += 1
        if config.patience is not None and epochs_without_gain >= config.patience and epoch < config.epochs:
            stopped_early = True
            break

    model.load_state_dict(best_state)
    model.to(memory_format=torch.contiguous_format).eval()
    return TrainResult(
        history=history,
        best_epoch=best_epoch,
        best_val_accuracy=best[0],
        stopped_early=stopped_early,
        images_per_second=seen_images / max(train_seconds, 1e-9),
        device=str(device),
    )


def reinitialise(model: nn.Module) -> None:
    """Reset every layer that can be reset, for retraining a slim model from scratch."""
    for module in model.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
