"""Typed settings of each stage (pydantic, no torch), shared by the command line and the service."""

from __future__ import annotations

import re
from typing import Annotated, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema, field_validator

ArchitectureName = Literal[
    "smallcnn",
    "alexnet",
    "vgg11",
    "vgg11_bn",
    "vgg13",
    "vgg13_bn",
    "vgg16",
    "vgg16_bn",
    "vgg19",
    "vgg19_bn",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "wide_resnet50_2",
    "wide_resnet101_2",
    "squeezenet1_0",
    "squeezenet1_1",
    "densenet121",
    "densenet161",
    "densenet169",
    "densenet201",
    "googlenet",
    "inception_v3",
    "shufflenet_v2_x0_5",
    "shufflenet_v2_x1_0",
    "shufflenet_v2_x1_5",
    "shufflenet_v2_x2_0",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "mnasnet0_5",
    "mnasnet0_75",
    "mnasnet1_0",
    "mnasnet1_3",
    "efficientnet_b0",
    "efficientnet_b1",
    "efficientnet_b2",
    "efficientnet_b3",
    "efficientnet_b4",
    "efficientnet_b5",
    "efficientnet_b6",
    "efficientnet_b7",
    "efficientnet_v2_s",
    "efficientnet_v2_m",
    "efficientnet_v2_l",
    "regnet_x_400mf",
    "regnet_x_800mf",
    "regnet_x_1_6gf",
    "regnet_x_3_2gf",
    "regnet_x_8gf",
    "regnet_x_16gf",
    "regnet_x_32gf",
    "regnet_y_400mf",
    "regnet_y_800mf",
    "regnet_y_1_6gf",
    "regnet_y_3_2gf",
    "regnet_y_8gf",
    "regnet_y_16gf",
    "regnet_y_32gf",
    "regnet_y_128gf",
    "convnext_tiny",
    "convnext_small",
    "convnext_base",
    "convnext_large",
]
"""An architecture layercut builds by name: every CNN classifier of torchvision, and a small plain CNN."""

ARCHITECTURE_NAMES: tuple[ArchitectureName, ...] = get_args(ArchitectureName)
"""The built-in architectures (kept here, free of torch, so the API can validate names)."""

TIMM_PREFIX = "timm/"
TIMM_PATTERN = r"^timm/[a-z0-9_]+(\.[a-z0-9_]+)?$"
"""A timm model by name (``timm/convnext_atto``, ``timm/resnet18.a1_in1k``): built by timm, randomly initialised."""


def _known_architecture(name: str) -> str:
    problem = architecture_problem(name)
    if problem is not None:
        raise ValueError(problem)
    return name


Architecture = Annotated[
    str,
    AfterValidator(_known_architecture),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "enum": list(get_args(ArchitectureName))},
                {"type": "string", "pattern": TIMM_PATTERN, "maxLength": 120, "examples": ["timm/convnext_atto"]},
            ],
            "description": "a built-in architecture, or a timm model as timm/<name> (random init, or your weights)",
        }
    ),
]
"""Any architecture a config may name: a built-in one, or a timm model (one error naming the field either way)."""


def architecture_problem(name: str) -> str | None:
    """Why ``name`` is no architecture (None when it is one); a timm name's model is only looked up when built."""
    if name in ARCHITECTURE_NAMES:
        return None
    if name.startswith(TIMM_PREFIX):
        if re.fullmatch(TIMM_PATTERN, name) and len(name) <= 120:
            return None
        return f"{name!r} is no timm model name: write timm/<name> in lower case, as timm.list_models() lists it"
    close = [
        n for n in ARCHITECTURE_NAMES if n.split("_")[0].rstrip("0123456789") == name.split("_")[0].rstrip("0123456789")
    ]
    hint = f" (did you mean {', '.join(close[:6])}?)" if close else ""
    return (
        f"unknown architecture {name!r}{hint}; give smallcnn, a torchvision CNN such as resnet18, densenet121 or "
        "convnext_tiny (`layercut layers --list` lists them), or a timm model as timm/<name>"
    )


MAX_SEED = 2**32 - 1
"""The largest seed (numpy's generators take 32-bit seeds)."""


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Config):
    """Where the images come from and how they are split."""

    source: str = Field(
        "textures",
        description="textures | digits | scenes | a torchvision dataset name (cifar10 …) | a folder: one sub-folder "
        "per class (optionally inside train/ val/ test/), or flat {label}_{id}.jpg files with the class names given",
    )
    image_size: int = Field(64, ge=32, le=1024, description="square input size in pixels (at least 32)")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seed of the train/validation/test split")
    val_fraction: float = Field(0.15, gt=0, lt=0.5)
    test_fraction: float = Field(0.15, gt=0, lt=0.5)
    classes: list[str] | None = Field(None, description="class names, needed for a flat folder of {label}_{id} files")
    skip_unreadable: bool = Field(
        False, description="skip files that cannot be decoded (their count is reported) instead of stopping"
    )
    allow_mixed_sizes: bool = Field(
        False, description="accept source images of different sizes (each is resized to the image size)"
    )
    data_root: str | None = Field(
        None,
        description="where torchvision datasets (cifar10 …) are stored; default: $LAYERCUT_DATA_ROOT, else "
        "datasets/ in the data directory ($LAYERCUT_DATA_DIR, else ~/.local/share/layercut)",
    )


class TrainConfig(_Config):
    """Optimisation settings for training a base model or retraining a slim one."""

    epochs: int = Field(5, ge=1, le=1000, description="maximum training epochs (early stopping may end sooner)")
    batch_size: int = Field(32, ge=2, le=4096, description="training batch size")
    optimizer: Literal["adam", "sgd"] = Field("adam", description="adam (AdamW) or sgd (momentum, Nesterov)")
    lr: float | None = Field(None, gt=0, description="initial learning rate; default 3e-4 for adam, 0.01 for sgd")
    momentum: float = Field(0.9, ge=0, lt=1, description="momentum of sgd")
    weight_decay: float = Field(1e-4, ge=0, le=1, description="weight decay")
    schedule: Literal["cosine", "step", "none"] = Field(
        "cosine", description="learning-rate schedule: cosine | step | none"
    )
    step_size: int = Field(10, ge=1, le=1000, description="epochs between learning-rate drops (step schedule)")
    gamma: float = Field(0.1, gt=0, le=1, description="learning-rate factor at each drop (step schedule)")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="label smoothing factor")
    augment: bool = Field(True, description="random flips and shifts while training")
    patience: int | None = Field(
        5, ge=1, le=1000, description="stop after this many epochs without a better validation accuracy"
    )
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seed of the initial weights, the batch order and augmentation")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where to run: auto (CUDA when available), cpu or cuda"
    )
    head_init: Literal["probe", "random"] = Field(
        "probe",
        description="how a slim model's new head starts when it is retrained: probe (a logistic regression fitted on "
        "its pooled training features, then fine-tuned with the rest) or random; a base model ignores it",
    )
    amp: bool = Field(True, description="mixed precision (CUDA only)")
    channels_last: bool = Field(True, description="channels_last memory format (CUDA only)")


DEFAULT_LEARNING_RATES = {"adam": 3e-4, "sgd": 1e-2}


def learning_rate(config: TrainConfig) -> float:
    """The configured learning rate, or the optimizer's default (AdamW 3e-4 suits plain VGGs too)."""
    return config.lr if config.lr is not None else DEFAULT_LEARNING_RATES[config.optimizer]


class AnalyzeConfig(_Config):
    """How probe images are chosen, how GBP maps are made and compared, and how the knee is picked."""

    probes_per_class: int = Field(4, ge=1, le=256, description="probe images per class for the analysis")
    max_probes: int = Field(64, ge=1, le=1024, description="at most this many probe images")
    probe_seed: int = Field(0, ge=0, le=MAX_SEED, description="seed of the choice of probe images")
    gbp_rule: Literal["relu", "derivative", "ungated"] = Field(
        "relu", description="guided-backprop rule for non-ReLU activations: relu | derivative | ungated"
    )
    grayscale: bool = Field(False, description="compare grayscale maps instead of colour")
    ssim_data_range: float = Field(1.0, gt=0, le=1e6, description="SSIM data_range of the map images")
    curve: Literal["cut", "adjacent"] = Field(
        "cut",
        description="the SSIM curve, on which the knee is picked: cut (mean SSIM over pairs i ≤ k < j, the paper's) "
        "or adjacent (SSIM(i, i+1))",
    )
    knee_sensitivity: float = Field(1.0, gt=0, le=100, description="kneed's S")
    knee_curve: Literal["concave", "convex"] = Field("concave", description="concave | convex (kneed's curve)")
    knee_direction: Literal["increasing", "decreasing"] = Field(
        "increasing", description="increasing | decreasing (kneed's direction)"
    )
    batch_size: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="probe images per GBP batch, at most (the memory budget may lower it); unset: sized to the image "
        "and the device, about two 224 px images on the CPU (smaller batches stay in the cache and ran fastest) and "
        "32 on a GPU",
    )
    memory_budget_mb: int | None = Field(
        None,
        ge=256,
        le=4 * 1024**2,
        description="peak resident memory (MiB) the analysis may reach, the process's own included: the GBP batch is "
        "made smaller to fit, and an analysis that cannot fit even one image at a time is refused before it starts, "
        "with the numbers (unset: no limit; a service worker caps it with LAYERCUT_ANALYZE_MEMORY_BUDGET_MB)",
    )
    depth_probes: bool = Field(
        True,
        description="fit a linear classifier on every cut point's pooled features (the probe curve the auto cut "
        "starts from; one forward pass over the training and validation images, no backward)",
    )
    depth_probe_images: int = Field(
        2000, ge=20, le=50000, description="at most this many training images (a class-balanced sample) for them"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where to run: auto (CUDA when available), cpu or cuda"
    )
    grid_rows: int = Field(4, ge=1, le=16, description="probe images shown in the GBP grid")


class TruncateConfig(_Config):
    """Where a model is cut and the dropout of its new head."""

    cut: str = Field(
        "auto",
        min_length=1,
        max_length=200,
        description="auto: the smallest slim model within the accuracy budget, confirmed by retraining (pipelines "
        "only); knee: the SSIM curve's knee (the paper's rule); or a cut point index or name",
    )
    dropout: float = Field(0.2, ge=0, lt=1, description="dropout of the new head")


CUT_RULES = ("auto", "knee")
"""The cut rules a pipeline can be given by name; any other ``cut`` is a cut point's index or name."""


class BudgetConfig(_Config):
    """How much validation accuracy a slim model may lose: the budget the ``auto`` cut keeps to, and that a sweep
    marks on its chart."""

    max_drop: float = Field(
        1.0, ge=0, le=100, description="percentage points of validation accuracy below the base model allowed"
    )
    min_accuracy: float | None = Field(
        None,
        le=100,
        description="instead of max_drop: the lowest validation accuracy accepted, in percent (e.g. 97.5)",
    )

    @field_validator("min_accuracy")
    @classmethod
    def _min_accuracy_is_in_percent(cls, value: float | None) -> float | None:
        if value is not None and value <= 1:
            raise ValueError(f"min_accuracy is in percent: give e.g. {max(value, 0) * 100:g} for {value:g} (above 1)")
        return value

    def threshold(self, base_accuracy: float) -> float:
        """The validation accuracy (a fraction) a slim model must reach, given the base model's (a fraction)."""
        if self.min_accuracy is not None:
            return self.min_accuracy / 100.0
        return base_accuracy - self.max_drop / 100.0

    def describe(self) -> str:
        """The budget in words, e.g. "at most 1.0 point below the base model"."""
        if self.min_accuracy is not None:
            return f"validation accuracy at least {self.min_accuracy:g} %"
        points = "point" if self.max_drop == 1 else "points"
        return f"at most {self.max_drop:g} {points} of validation accuracy below the base model"


class SelectConfig(BudgetConfig):
    """The ``auto`` cut: candidates from the depth probes and the knee, retrained smallest first until the answer
    is certain."""

    max_retrains: int = Field(
        6, ge=1, le=64, description="most slim models the auto cut retrains (it usually stops after 2-4)"
    )


SweepCuts = str
"""Which cut points a sweep retrains: ``all``, ``every:K`` (every K-th, the last always), or ``3,5,layer3.1``."""


class SweepConfig(BudgetConfig):
    """A sweep: one slim model per chosen cut point, retrained with the same budget."""

    cuts: SweepCuts = Field(
        "all", max_length=1000, description="all | every:K | a comma-separated list of cut point indices or names"
    )
    dropout: float = Field(0.2, ge=0, lt=1, description="dropout of each slim model's new head")

    @field_validator("cuts")
    @classmethod
    def _cuts_are_a_known_form(cls, value: str) -> str:
        text = value.replace(" ", "")
        if text == "all" or re.fullmatch(r"every:[1-9][0-9]*", text):
            return text
        items = text.split(",")
        if text.startswith("every") or not all(re.fullmatch(r"-?[0-9]+|[A-Za-z_][\w.]*", item) for item in items):
            raise ValueError("give all, every:K (K ≥ 1), or a comma-separated list of cut point indices or names")
        return text


MAX_LATENCY_BATCHES = 8
LatencyBatch = Annotated[int, Field(ge=1, le=1024)]
"""One batch size of a latency measurement."""


class CompareConfig(_Config):
    latency_batches: list[LatencyBatch] = Field(
        default_factory=lambda: [1, 32],
        min_length=1,
        max_length=MAX_LATENCY_BATCHES,
        description="batch sizes whose latency is measured (1 to 1024 images, at most 8 sizes)",
    )
    latency_repeats: int = Field(10, ge=1, le=1000, description="timed runs per latency measurement")
    latency_warmup: int = Field(3, ge=0, le=100, description="untimed runs before the timed ones")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where to run: auto (CUDA when available), cpu or cuda"
    )
    onnxruntime: bool = Field(
        True,
        description="also export each model to ONNX and time it in ONNX Runtime on the CPU, beside torch "
        "(labels onnxruntime_cpu_b1 …)",
    )


ExportFormat = Literal["onnx", "torchscript", "exported-program"]
"""A deployable file: ONNX (any ONNX runtime), TorchScript (``torch.jit.load``) or a ``torch.export`` ExportedProgram
(``torch.export.load``)."""

EXPORT_FORMATS: tuple[ExportFormat, ...] = get_args(ExportFormat)

EXPORT_SUFFIXES: dict[ExportFormat, str] = {"onnx": ".onnx", "torchscript": ".ts", "exported-program": ".pt2"}
"""The file name ending of each export format."""


class ExportConfig(_Config):
    """How a checkpoint is exported for deployment and how the exported file is checked against torch."""

    format: ExportFormat = Field(
        "onnx",
        description="onnx (ONNX Runtime or any ONNX runtime), torchscript (torch.jit.load) or exported-program "
        "(torch.export.load)",
    )
    tolerance: float = Field(
        1e-4, gt=0, description="the largest |difference| of the logits, exported file vs torch, that is accepted"
    )
    parity_images: int = Field(32, ge=1, le=1024, description="images whose logits are compared")
    opset: int | None = Field(
        None, ge=18, le=23, description="ONNX opset version (onnx only); default: the exporter's own"
    )
    latency_batches: list[int] = Field(
        default_factory=lambda: [1, 32], description="batch sizes whose CPU latency is measured"
    )
    latency_repeats: int = Field(10, ge=1, le=1000, description="timed runs per latency measurement")
    latency_warmup: int = Field(3, ge=0, le=100, description="untimed runs before the timed ones")
    threads: int | None = Field(
        None, ge=1, le=256, description="CPU threads of torch and ONNX Runtime while timing; default: torch's"
    )

    @field_validator("latency_batches")
    @classmethod
    def _batches(cls, value: list[int]) -> list[int]:
        if len(value) > 8 or any(not 1 <= b <= 1024 for b in value):
            raise ValueError("give at most 8 batch sizes, each from 1 to 1024")
        return value


class MlflowTarget(_Config):
    """Where in MLflow a run goes: its experiment and the registered model base and slim become versions of (what a
    service pipeline may choose; the tracking server is the service's own setting)."""

    experiment: str = Field("layercut", min_length=1, max_length=500, description="the MLflow experiment's name")
    registered_model: str | None = Field(
        None, min_length=1, max_length=500, description="the registered model's name; default: layercut-<architecture>"
    )


class MlflowConfig(MlflowTarget):
    """Where a finished run is logged: an MLflow tracking server (parameters, metrics per epoch, the report and
    pictures) and its model registry (base and slim as ONNX versions of one registered model)."""

    tracking_uri: str = Field(
        min_length=1,
        max_length=2000,
        pattern=r"^[A-Za-z][A-Za-z0-9+.-]*:",
        description="the tracking server, e.g. http://mlflow.internal:5000 (or file:/… , sqlite:///…)",
    )


ExplainMethod = Literal[
    "gradcam",
    "gradcam++",
    "layercam",
    "eigencam",
    "scorecam",
    "guided_backprop",
    "guided_gradcam",
    "saliency",
]
"""The explanation methods of the explain stage (CAMs first, then the input-gradient maps)."""

EXPLAIN_METHODS: tuple[ExplainMethod, ...] = get_args(ExplainMethod)

ExplainMethodItem = Annotated[
    ExplainMethod,
    Field(json_schema_extra={"x-enum-varnames": [m.upper().replace("++", "_PLUS_PLUS") for m in EXPLAIN_METHODS]}),
]
"""An explanation method in a schema, with member names for generated clients (``gradcam`` and ``gradcam++`` would
otherwise both become ``GRADCAM``)."""

DEFAULT_EXPLAIN_METHODS: tuple[ExplainMethod, ...] = tuple(m for m in EXPLAIN_METHODS if m != "scorecam")
"""Every method but Score-CAM, which costs one forward pass per channel and image (ask for it by name)."""


class ExplainConfig(_Config):
    """Which test images are explained, by which methods, at which layer and for which class."""

    methods: list[ExplainMethodItem] = Field(
        default_factory=lambda: list(DEFAULT_EXPLAIN_METHODS),
        min_length=1,
        description="default: every method but scorecam (one forward per channel)",
    )
    layer: str | None = Field(
        None, description="module name of the explained layer, e.g. features.7 or layer4 (default: the last cut point)"
    )
    feature_layer: str | None = Field(
        None, description="layer whose feature maps and receptive field are shown (default: --layer)"
    )
    target: Literal["predicted", "all"] | int = Field(
        "predicted",
        description="the class explained: predicted (each model's own), all (every class), or a class index",
    )
    images: int = Field(8, ge=1, le=256, description="test images explained (a seeded sample spread over the classes)")
    feature_maps: int = Field(8, ge=0, le=64, description="most active channels shown per image (0: none)")
    edges: bool = Field(False, description="draw Canny edges of the input over the overlays")
    batch_size: int = Field(16, ge=1, le=1024, description="images per forward/backward pass")
    scorecam_batch_size: int = Field(64, ge=1, le=1024, description="masked images per forward pass in Score-CAM")
    gbp_rule: Literal["relu", "derivative", "ungated"] = Field(
        "relu", description="guided-backprop rule for non-ReLU activations: relu | derivative | ungated"
    )
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seed of the image choice")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where to run: auto (CUDA when available), cpu or cuda"
    )
