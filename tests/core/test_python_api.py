"""The Python API (`import layercut`): stages in-process, and the checkpoint remembers exactly how its data was loaded."""

from pathlib import Path

from torch import nn

import layercut as lc
from layercut.stages.checkpoint import read_spec


def test_train_records_the_data_settings_and_loads_as_a_module(tmp_path: Path) -> None:
    data = lc.load_data("textures", image_size=32, seed=3)
    summary = lc.train(data, "smallcnn", tmp_path / "base", epochs=1)
    spec = read_spec(tmp_path / "base" / "model.safetensors")
    assert spec.data["source"] == "textures" and spec.data["seed"] == 3 and spec.data["image_size"] == 32
    model, loaded_spec = lc.load_model(tmp_path / "base" / "model.safetensors")
    assert isinstance(model, nn.Module) and not model.training
    assert loaded_spec.classes == data.classes == summary.classes
