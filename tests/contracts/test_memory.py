"""The memory estimate the API refuses jobs with: the table is what the generator measures, every built-in
architecture is in it, and the arithmetic is the documented one."""

from __future__ import annotations

import pytest

from layercut.contracts.configs import ARCHITECTURE_NAMES
from layercut.contracts.footprints import FOOTPRINTS
from layercut.contracts.memory import (
    BACKWARD_HEADROOM,
    PROCESS_BYTES,
    WEIGHT_COPIES,
    analysis_memory,
    largest_batch,
    per_image_bytes,
    training_memory,
)


def test_every_built_in_architecture_is_in_the_table() -> None:
    assert set(FOOTPRINTS) == set(ARCHITECTURE_NAMES)
    assert per_image_bytes("timm/convnext_tiny", 64) is None and training_memory("timm/x", 64, 8, "adam") is None


@pytest.mark.parametrize("arch", ["smallcnn", "resnet18", "mobilenet_v3_small"])
def test_the_table_is_what_the_generator_measures(arch: str) -> None:
    from layercut.stages.footprint import measure

    measured = measure(arch)
    params, fixed, per_pixel = FOOTPRINTS[arch]
    assert (measured.params, measured.fixed, round(measured.per_pixel, 4)) == (params, fixed, per_pixel)


def test_saved_bytes_of_a_tiny_net_by_hand() -> None:
    """conv(3→4) → ReLU → conv(4→2), per image of S × S: the first convolution saves its input (3·S² floats), the
    ReLU its output (4·S²), which the second convolution saves too (the same tensor, counted once): 28·S² bytes.
    The weights each convolution saves do not grow with the batch and drop out."""
    import torch
    from torch import nn

    from layercut.stages.footprint import per_image

    meta = torch.device("meta")
    with meta:
        model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1))
    for size in (8, 16, 40):
        assert per_image(model, size, meta) == 28 * size * size


def test_the_training_estimate_adds_the_process_the_weights_and_the_images() -> None:
    params, fixed, per_pixel = FOOTPRINTS["resnet50"]
    per_image = int(fixed + per_pixel * 224 * 224)
    adam = training_memory("resnet50", 224, 32, "adam")
    assert adam is not None and adam.per_image == per_image and adam.images == 32
    assert adam.weights == params * 4 * (WEIGHT_COPIES + 2)
    assert adam.total == PROCESS_BYTES + adam.weights + int(32 * per_image * BACKWARD_HEADROOM)
    sgd = training_memory("resnet50", 224, 32, "sgd")
    assert sgd is not None and adam.total - sgd.total == params * 4  # one moment fewer
    assert "32 image(s)" in adam.explain() and "GiB" in adam.explain()


def test_the_largest_batch_is_the_last_that_fits() -> None:
    limit = 8 * 2**30
    fits = largest_batch("vgg16", 224, "adam", limit)
    assert fits > 0
    assert (
        training_memory("vgg16", 224, fits, "adam").total
        <= limit
        < training_memory("vgg16", 224, fits + 1, "adam").total
    )
    assert largest_batch("regnet_y_128gf", 224, "adam", 4 * 2**30) == 0  # its weights alone do not fit


def test_the_analysis_needs_one_image_beside_the_model() -> None:
    estimate = analysis_memory("resnet152", 1024)
    assert estimate is not None and estimate.images == 1
    assert estimate.total == PROCESS_BYTES + FOOTPRINTS["resnet152"][0] * 4 + per_image_bytes("resnet152", 1024)
    assert analysis_memory("resnet152", 224).total < analysis_memory("resnet152", 1024).total
