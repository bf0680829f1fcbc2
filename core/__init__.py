"""layercut: find where a trained CNN stops learning new features, cut it there, retrain the slim model, compare.

``import layercut`` is the Python API; every stage runs in this process on files and ``nn.Module``s::

    import layercut as lc
    data = lc.load_data("textures", image_size=64)
    base = lc.train(data, "vgg11", "out/base", epochs=4)
    analysis = lc.analyze("out/base/model.safetensors", data, "out/analysis")
    cut = lc.truncate("out/base/model.safetensors", "out/slim/initial.safetensors", analysis="out/analysis/analysis.json")
    slim = lc.retrain("out/slim/initial.safetensors", data, "out/slim")
    comparison = lc.compare("out/base/model.safetensors", "out/slim/model.safetensors", data, "out/compare")
    model, spec = lc.load_model("out/slim/model.safetensors")
    mine = lc.import_model("resnet50.pt", "out/mine.safetensors", arch="resnet50", classes=names, image_size=224)
    chosen = lc.select("out/base/model.safetensors", data, "out/analysis/analysis.json", "out/select", max_drop=1.0)
    summary = lc.run("out/run", source="digits", arch="resnet18", image_size=32)   # all of it, cut by the budget
    exported = lc.export("out/run/slim/model.safetensors", "out/slim.onnx", data="digits")   # ONNX, checked, timed

The functions load torch when first used, so ``import layercut`` (and the torch-free rooms ``layercut.contracts``,
``layercut.api``, ``layercut.report``) stay light. The rooms and the arrows between them: docs/architecture.md.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("layercut")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

PUBLIC_FUNCTIONS = (
    "load_data",
    "load_model",
    "import_model",
    "train",
    "analyze",
    "truncate",
    "retrain",
    "select",
    "sweep",
    "compare",
    "explain",
    "export",
    "run",
)
__all__ = [
    "__version__",
    "analyze",
    "compare",
    "explain",
    "export",
    "import_model",
    "load_data",
    "load_model",
    "retrain",
    "run",
    "select",
    "sweep",
    "train",
    "truncate",
]

if TYPE_CHECKING:
    from layercut.local import (
        analyze,
        compare,
        explain,
        export,
        import_model,
        load_data,
        load_model,
        retrain,
        run,
        select,
        sweep,
        train,
        truncate,
    )


def __getattr__(name: str) -> Any:
    """The public functions, imported from ``layercut.local`` (and with it torch) on first use."""
    if name in PUBLIC_FUNCTIONS:
        value = getattr(import_module("layercut.local"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'layercut' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *PUBLIC_FUNCTIONS})
