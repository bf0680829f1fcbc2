"""The result of every stage, declared once: what metrics.json, analysis.json, truncate.json, compare.json,
explain.json and run.json hold, as pydantic models (torch-free).

Every model forbids unknown keys. A key that only some results carry (say, ``origin`` for the digits data) is
an optional field that is left out of a dump when it is None (``exclude_if``), so a dump writes back exactly
the keys that were read; a key that is always written, even as null, is a plain ``X | None`` field.
Keys that are names (classes, latency labels such as ``cpu_b32``, figure names) are ``dict[str, Model]``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from layercut.contracts.configs import (
    AnalyzeConfig,
    DataConfig,
    ExplainConfig,
    ExplainMethodItem,
    ExportConfig,
    ExportFormat,
    SelectConfig,
    SweepConfig,
    TrainConfig,
)
from layercut.contracts.kinds import StageKind
from layercut.contracts.spec import CutPointRef

SplitName = Literal["train", "val", "test"]
"""One of the three splits of a dataset."""

ExplainTarget = Literal["predicted", "all"] | int
"""The class an explanation explains: each model's predicted class, every class, or one class index."""

ModelKey = Literal["base", "slim"]
"""The role of a model in a comparison or an explanation."""


def _is_none(value: object) -> bool:
    """True for a value that a dump leaves out (an optional key that the producer did not write)."""
    return value is None


class _Result(BaseModel):
    """Base of every result model: unknown keys are errors; keys that are Python keywords use their alias."""

    model_config = ConfigDict(extra="forbid", validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)


# ----------------------------------------------------------------------------------------- the data


class SplitSizes(_Result):
    """Images in each split."""

    train: int = Field(ge=0)
    val: int = Field(ge=0)
    test: int = Field(ge=0)


class PerClassCounts(_Result):
    """Images per class name in each split."""

    train: dict[str, int]
    val: dict[str, int]
    test: dict[str, int]


class CarvedSplit(_Result):
    """A split carved (seeded, stratified) out of another one."""

    from_: Literal["train"] = Field(alias="from", description="the split it was carved from")
    fraction_of_train: float


class SplitInfo(_Result):
    """How the splits were made; which keys are present depends on the method."""

    method: Literal["seeded-stratified", "given", "given+carved", "fixed-regions"] = Field(
        description="seeded-stratified: carved from all images; given: the source's own folders; given+carved: "
        "the missing ones carved from train; fixed-regions: the built-in textures' disjoint row bands"
    )
    seed: int
    val_fraction: float | None = Field(None, exclude_if=_is_none, description="seeded-stratified only")
    test_fraction: float | None = Field(None, exclude_if=_is_none, description="seeded-stratified only")
    given: list[SplitName] | None = Field(
        None, exclude_if=_is_none, description="given, given+carved: the splits the source has"
    )
    carved: dict[SplitName, CarvedSplit] | None = Field(
        None, exclude_if=_is_none, description="given, given+carved: the splits carved out of train"
    )
    note: str | None = Field(None, exclude_if=_is_none, description="why a fraction setting did not apply")


class SkippedFiles(_Result):
    """Files left out because they could not be decoded (skip_unreadable)."""

    count: int = Field(ge=0)
    files: list[str]
    reasons: dict[str, str] = Field(description="file path → why it could not be read")


class IgnoredFiles(_Result):
    """Files of a folder source that are not images of a class."""

    count: int = Field(ge=0)
    files: list[str] = Field(description="the first 50 of them")


class TextureRegion(_Result):
    """The pixel rows and columns ``[start, end)`` of a photograph that one split's patches come from."""

    rows: tuple[int, int]
    cols: tuple[int, int]


class TexturesInfo(_Result):
    """Where the built-in textures' patches were cut from, so anyone can check that no split leaks into another."""

    photographs: dict[str, str] = Field(description="class name → the scikit-image photograph it is cut from")
    patch_size: int = Field(ge=1, description="native side of a patch in pixels")
    patches_per_class: SplitSizes
    regions: dict[str, dict[SplitName, TextureRegion]] = Field(description="class name → split → its band")
    box_format: str
    boxes: dict[str, dict[SplitName, list[tuple[int, int]]]] = Field(
        description="class name → split → [top, left] of every patch"
    )
    no_leak: str


DataKind = Literal[
    "builtin",
    "torchvision",
    "class-folders",
    "flat",
    "pre-split (class-folders)",
    "pre-split (flat)",
]
"""What a data source is: a built-in set, a torchvision set, or the layout of an image folder."""


class DataInfo(_Result):
    """The description of a loaded dataset: the keys every source writes, and those only some sources write."""

    name: str
    source: str = Field(description="textures, digits, a torchvision dataset name, or the folder's absolute path")
    kind: DataKind
    classes: list[str]
    num_classes: int = Field(ge=2)
    image_size: int = Field(ge=1)
    source_channels: int = Field(ge=1, description="channels of the source images (1: grayscale, 3: colour)")
    sizes: SplitSizes
    per_class: PerClassCounts
    split: SplitInfo
    skipped: SkippedFiles
    warnings: list[str]
    origin: str | None = Field(None, exclude_if=_is_none, description="digits: where the images come from")
    textures: TexturesInfo | None = Field(None, exclude_if=_is_none, description="textures only")
    folder: str | None = Field(
        None, exclude_if=_is_none, description="torchvision sets: the folder they were read from"
    )
    native_sizes: dict[str, int] | None = Field(
        None, exclude_if=_is_none, description="folders and torchvision sets: images per native size 'WxH'"
    )
    modes: dict[str, int] | None = Field(None, exclude_if=_is_none, description="folders: images per PIL mode")
    decoded_as: Literal["L", "RGB"] | None = Field(
        None, exclude_if=_is_none, description="folders: the PIL mode every image was decoded to"
    )
    ignored: IgnoredFiles | None = Field(None, exclude_if=_is_none, description="folders only")
    data_config: DataConfig | None = Field(
        None,
        exclude_if=_is_none,
        description="set by layercut.load_data (the Python API): the settings the data was loaded with",
    )


# ----------------------------------------------------------------------------------------- metrics


class ClassRow(_Result):
    """One class of a classification report."""

    precision: float
    recall: float
    f1: float
    support: int = Field(ge=0, description="images of this class")
    predicted: int = Field(ge=0, description="images predicted as this class")


class ConfusedCell(_Result):
    """One off-diagonal cell of the confusion matrix: images of class ``true`` predicted as ``predicted``."""

    true: str
    predicted: str
    count: int = Field(ge=1)
    share_of_true: float = Field(description="count / images of the true class")


class ClassificationReport(_Result):
    """Accuracy, macro/weighted precision-recall-F1, confusion matrix, per-class rows, ROC AUC, top confusions."""

    n: int = Field(ge=1, description="images evaluated")
    num_classes: int = Field(ge=2)
    classes: list[str]
    scores_were: Literal["probabilities", "logits (softmax applied)"]
    accuracy: float
    macro_precision: float
    macro_recall: float
    macro_f1: float
    weighted_precision: float
    weighted_recall: float
    weighted_f1: float
    macro_averaged_over: list[str] = Field(description="the classes present in the labels or the predictions")
    confusion_matrix: list[list[int]]
    confusion_matrix_axes: str
    per_class: dict[str, ClassRow] = Field(description="class name → its row")
    roc_auc_macro: float | None = Field(description="null when no class has a defined ROC AUC")
    roc_auc_per_class: dict[str, float | None] = Field(
        description="class name → one-vs-rest ROC AUC; null for a class absent from the labels (or all of them)"
    )
    roc_auc_undefined_classes: list[str]
    roc_auc_note: str
    most_confused: list[ConfusedCell] = Field(description="the largest off-diagonal cells, largest first")


class EpochRow(_Result):
    """One epoch of the training history."""

    epoch: int = Field(ge=1)
    train_loss: float | None = Field(description="mean training loss; not finite (NaN) when training diverged")
    train_accuracy: float
    val_loss: float | None = Field(description="validation loss; not finite (NaN) when training diverged")
    val_accuracy: float
    lr: float = Field(description="learning rate at the end of the epoch")
    seconds: float


class _TrainingResult(_Result):
    """What train and retrain both record in metrics.json."""

    checkpoint: str = Field(description="path of the trained model.safetensors")
    architecture: str
    cut_point: CutPointRef | None = Field(description="the base cut point a slim model ends at; null for a base model")
    classes: list[str]
    params: int = Field(ge=0)
    accuracy: float = Field(description="test accuracy")
    macro_f1: float = Field(description="test macro F1")
    best_epoch: int = Field(
        ge=0,
        description="the epoch whose weights were kept (best validation accuracy); 0: the starting weights, a slim "
        "model whose fitted head no epoch of fine-tuning improved on",
    )
    best_val_accuracy: float
    stopped_early: bool
    epochs_run: int = Field(ge=1)
    images_per_second: float = Field(description="training throughput")
    device: str = Field(description="the torch device trained on, e.g. cpu or cuda:0")
    history: list[EpochRow]
    val: ClassificationReport
    test: ClassificationReport
    data: DataInfo
    config: TrainConfig


class TrainResult(_TrainingResult):
    """metrics.json of the train stage: a base model trained from its initial (or pretrained) weights."""

    stage: Literal["train"]
    pretrained: bool = Field(description="started from ImageNet weights")


class RetrainResult(_TrainingResult):
    """metrics.json of the retrain stage: a slim model fine-tuned from its kept weights (or from scratch)."""

    stage: Literal["retrain"]
    from_scratch: bool = Field(description="every layer was re-initialised before training")
    initial_checkpoint: str = Field(description="the slim checkpoint as cut (truncate's output)")


TrainingResult = Annotated[TrainResult | RetrainResult, Field(discriminator="stage")]
"""A metrics.json: the result of a train or a retrain stage (told apart by ``stage``)."""


# ----------------------------------------------------------------------------------------- analyze


class CutPointInfo(CutPointRef):
    """A cut point with its module's class name and its output shape at the model's input size."""

    module: str = Field(description="the module's class name, e.g. ReLU or BasicBlock")
    channels: int = Field(ge=1)
    height: int = Field(ge=1)
    width: int = Field(ge=1)


class ChosenCutPoint(CutPointInfo):
    """The cut point at the knee, with the curve's value there."""

    curve_value: float


class ProbeSettings(_Result):
    """The probe images whose GBP maps are compared."""

    split: Literal["val"]
    count: int = Field(ge=1)
    per_class: int = Field(ge=1)
    max: int = Field(ge=1)
    seed: int
    indices: list[int] = Field(description="indices into the validation split")
    labels: list[int]


class GbpSettings(_Result):
    """How the guided-backprop maps were computed."""

    definition: str
    rule: Literal["relu", "derivative", "ungated"]
    batch_size: int = Field(ge=1)


class AnalyzeMemory(_Result):
    """How the analysis fitted its memory: the plan made before it started and the peak it reached."""

    budget_mb: float | None = Field(description="the memory budget (MiB of peak resident memory), or null for none")
    batch_size: int = Field(ge=1, description="probe images per GBP batch actually used (the budget may lower it)")
    resident_at_start_mb: float = Field(ge=0, description="the process's resident memory when the analysis started")
    gbp_graph_mb_per_image: float = Field(ge=0, description="memory one image's guided-backprop graph holds")
    maps_mb_per_image: float = Field(ge=0, description="raw maps and map images of one probe image, float32")
    ssim_mb: float = Field(ge=0, description="the SSIM's float64 working memory")
    estimated_peak_mb: float = Field(ge=0, description="the plan's estimate of the peak resident memory")
    peak_resident_mb: float | None = Field(
        None,
        description="the process's peak resident memory at the end of the analysis (its peak over its whole life "
        "so far, so an upper bound of the analysis's own)",
    )


class MapImageSettings(_Result):
    """How a raw GBP map was turned into an image."""

    normalisation: str
    grayscale: bool


class SsimSettings(_Result):
    """The SSIM settings (scikit-image's defaults, data range stated)."""

    implementation: str
    data_range: float
    win_size: int
    k1: float
    k2: float
    gaussian_weights: bool
    covariance: Literal["sample", "population"]
    border_cropped: int
    channels: int = Field(ge=1)


class Curves(_Result):
    """The two SSIM curves of a similarity matrix: value k of ``cut`` is the mean over pairs i ≤ k < j."""

    cut: list[float]
    adjacent: list[float] = Field(description="value i = SSIM(i, i + 1)")


class Knee(_Result):
    """The knee of the chosen curve, how it was found and the kneed settings used."""

    curve_mode: Literal["cut", "adjacent"] = Field(description="the curve the knee was picked on")
    index: int = Field(
        ge=0,
        description="the cut point's index: an index into the curve, or one past its end (the last cut point) "
        "when the curve has no rise and the whole network is kept",
    )
    found: bool = Field(description="kneed found it; false when a fallback rule chose it")
    rule: Literal["kneed", "fallback:rise-fraction", "fallback:whole-network", "fallback:last"] = Field(
        description="fallback:whole-network: the curve is flat or falls, so no depth levels off and every cut "
        "point is kept; fallback:last is the rule of older analyses (the curve's last index)"
    )
    reason: str | None = Field(description="why a fallback rule was used; null when kneed found the knee")
    S: float = Field(description="kneed's sensitivity")
    curve: Literal["concave", "convex"]
    direction: Literal["increasing", "decreasing"]
    fallback_fraction: float


class AnalyzeSeconds(_Result):
    """Wall-clock seconds of the analysis."""

    gbp: float
    ssim: float
    total: float
    maps: float | None = Field(
        None, exclude_if=_is_none, description="turning raw maps into map images and writing gbp_maps.npz"
    )
    depth_probes: float | None = Field(None, exclude_if=_is_none, description="the depth probes, when computed")


class DepthProbe(_Result):
    """A linear classifier fitted on one cut point's globally pooled features: how readable the classes are there."""

    index: int = Field(ge=0)
    name: str
    features: int = Field(ge=1, description="length of the pooled feature vector (the cut point's channels)")
    train_accuracy: float
    val_accuracy: float


class DepthProbeSeconds(_Result):
    """Wall-clock seconds of the depth probes: the forward pass over the images and the classifier fits."""

    features: float
    fit: float


class DepthProbes(_Result):
    """The probe curve: per cut point, the validation accuracy of a linear classifier on its pooled features."""

    method: str = Field(description="the classifier and the features it reads, in words")
    train_images: int = Field(ge=1, description="training images the classifiers were fitted on")
    val_images: int = Field(ge=1, description="validation images they were scored on")
    base_val_accuracy: float = Field(description="the whole model's validation accuracy, for reference")
    points: list[DepthProbe]
    seconds: DepthProbeSeconds

    @property
    def curve(self) -> list[float]:
        """Validation accuracy per cut point, shallowest first."""
        return [point.val_accuracy for point in self.points]


class AnalyzeResult(_Result):
    """analysis.json: GBP maps of every cut point for probe images, their SSIM matrix, both curves and the knee."""

    stage: Literal["analyze"]
    checkpoint: str
    architecture: str
    image_size: int = Field(ge=1)
    classes: list[str]
    cut_points: list[CutPointInfo]
    probes: ProbeSettings
    gbp: GbpSettings
    map_image: MapImageSettings
    ssim: SsimSettings
    similarity_matrix: list[list[float]] = Field(description="SSIM of every pair of cut points, mean over probes")
    curves: Curves
    knee: Knee
    knee_found: bool = Field(description="the same as knee.found")
    cut_point: ChosenCutPoint
    depth_probes: DepthProbes | None = Field(
        None, exclude_if=_is_none, description="the probe curve (absent when the analysis was run without it)"
    )
    device: str
    seconds: AnalyzeSeconds
    memory: AnalyzeMemory | None = Field(
        None, exclude_if=_is_none, description="the memory plan and the peak reached (absent in older analyses)"
    )
    config: AnalyzeConfig


# ----------------------------------------------------------------------------------------- truncate

CutRuleName = Literal["auto", "knee", "user"]
"""The rule that chose a cut: the accuracy budget (auto), the SSIM curve's knee, or the user naming a cut point."""


class TruncateResult(_Result):
    """truncate.json: the slim model as cut (untrained head) and how much of the base it keeps."""

    stage: Literal["truncate"]
    checkpoint: str = Field(description="path of the slim checkpoint as cut")
    cut_point: CutPointRef
    chosen_by: CutRuleName = Field(
        description="knee: the analysis' knee; user: a cut point named; auto: a candidate of the accuracy budget"
    )
    base_params: int = Field(ge=0)
    slim_params: int = Field(ge=0)
    params_kept: float = Field(description="slim_params / base_params")
    cut_points_total: int = Field(ge=1, description="cut points of the base model")


# ----------------------------------------------------------------------------------------- import


class ImportResult(_Result):
    """import.json: a model trained elsewhere, checked against its architecture and written as a checkpoint."""

    stage: Literal["import"]
    checkpoint: str = Field(description="path of the layercut checkpoint written")
    architecture: str
    num_classes: int = Field(ge=2)
    image_size: int = Field(ge=1)
    source_format: Literal["safetensors", "torch"] = Field(
        description="safetensors, or a torch.save'd state dict (read with weights_only=True)"
    )
    found_under: str | None = Field(None, description="the checkpoint key the state dict was under (e.g. state_dict)")
    stripped_prefix: str | None = Field(None, description="a wrapper's key prefix removed (e.g. module.)")
    tensors: int = Field(ge=1, description="tensors read from the file")
    source_dtypes: list[str] = Field(description="dtypes of the tensors in the file")
    params: int = Field(ge=0, description="parameters (BatchNorm running statistics are buffers, not counted)")
    buffers: int = Field(ge=0, description="elements of buffers (BatchNorm running statistics and counters)")


# ----------------------------------------------------------------------------------------- compare


LatencyRuntime = Literal["onnxruntime", "torchscript", "exported-program"]
"""What ran a timed model other than eager torch: ONNX Runtime, ``torch.jit.load`` or ``torch.export.load``."""


class LatencyMeasurement(_Result):
    """Milliseconds per forward pass at one input shape on one device, and how they were measured."""

    device: str = Field(description="cpu or the GPU's name")
    device_type: Literal["cpu", "cuda"]
    threads: int = Field(ge=1, description="torch CPU threads (ONNX Runtime's intra-op threads for its runtime)")
    batch_size: int = Field(ge=1)
    input_shape: tuple[int, int, int, int]
    warmup: int = Field(ge=0)
    repeats: int = Field(ge=1)
    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    times_ms: list[float]
    runtime: LatencyRuntime | None = Field(
        None, exclude_if=_is_none, description="what ran the model, when not torch itself (eager)"
    )


class ProfiledModel(_Result):
    """One model of a comparison: test metrics, size and speed."""

    checkpoint: str
    architecture: str
    cut_point: CutPointRef | None = Field(description="null for a base model")
    accuracy: float = Field(description="test accuracy")
    macro_f1: float = Field(description="test macro F1")
    params: int = Field(ge=0)
    macs: int = Field(ge=0, description="multiply-accumulates of one forward pass of one image")
    checkpoint_bytes: int = Field(ge=0)
    latency: dict[str, LatencyMeasurement] = Field(
        description="label (cpu_b1, gpu_b32, onnxruntime_cpu_b1 …) → measurement"
    )
    test: ClassificationReport
    onnxruntime_error: str | None = Field(
        None, exclude_if=_is_none, description="why the model could not be timed in ONNX Runtime, when it could not"
    )


class FloatChange(_Result):
    """A float metric of both models: delta = slim − base, ratio = slim / base (null when base is 0)."""

    base: float
    slim: float
    delta: float
    ratio: float | None


class IntChange(_Result):
    """A count of both models: delta = slim − base, ratio = slim / base (null when base is 0)."""

    base: int
    slim: int
    delta: int
    ratio: float | None


class ComparedMetrics(_Result):
    """Each compared metric, base and slim."""

    accuracy: FloatChange
    macro_f1: FloatChange
    params: IntChange
    macs: IntChange
    checkpoint_bytes: IntChange


class Reductions(_Result):
    """Percent saved by the slim model: 100 · (1 − slim / base); null when base is 0."""

    params: float | None
    macs: float | None
    checkpoint_bytes: float | None


class LatencyChange(_Result):
    """The latency of both models under one label."""

    batch_size: int = Field(ge=1)
    device: str
    device_type: Literal["cpu", "cuda"]
    base_ms: float
    slim_ms: float
    delta_ms: float
    ratio: float | None = Field(description="slim / base")
    speedup: float | None = Field(description="base / slim")


class Comparison(_Result):
    """The base-vs-slim record: each metric with delta and ratio, reductions and speed-ups."""

    metrics: ComparedMetrics
    reduction_percent: Reductions
    latency: dict[str, LatencyChange] = Field(description="label (cpu_b1, …) → both latencies, CPU first")
    latency_statistic: str


class CompareResult(_Result):
    """compare.json: accuracy, F1, size and speed of a base and a slim model on the same test split."""

    stage: Literal["compare"]
    base: ProfiledModel
    slim: ProfiledModel
    comparison: Comparison
    threads: int = Field(ge=1, description="torch CPU threads")
    test_images: int = Field(ge=1)


# ----------------------------------------------------------------------------------------- export


class ExportParity(_Result):
    """The exported file's logits against torch's on the same images."""

    max_abs_diff: float = Field(description="largest |exported − torch| over every logit of every image")
    mean_abs_diff: float
    tolerance: float = Field(description="the largest max_abs_diff accepted")
    images: int = Field(ge=1, description="images compared")
    images_from: Literal["test split", "random"] = Field(
        description="the dataset's test split, or seeded random images when no dataset was given"
    )
    same_predictions: float = Field(description="share of images whose predicted class is the same")
    batch_sizes: list[int] = Field(description="the batch sizes run through the exported file (its dynamic axis)")


class ExportVersions(_Result):
    """The versions of what wrote the file (and, for onnx, what checked it)."""

    torch: str
    onnx: str | None = Field(None, exclude_if=_is_none)
    onnxscript: str | None = Field(None, exclude_if=_is_none)
    onnxruntime: str | None = Field(None, exclude_if=_is_none)


class ExportResult(_Result):
    """export.json: a checkpoint written as a deployable file (ONNX, TorchScript or ExportedProgram), checked
    against torch and timed on the CPU: by ``layercut export`` beside the file, or by an export job."""

    stage: Literal["export"]
    checkpoint: str
    architecture: str
    cut_point: CutPointRef | None = Field(description="null for a base model")
    format: ExportFormat
    file: str = Field(description="path of the exported file")
    bytes: int = Field(ge=0)
    sha256: str
    exporter: str = Field(description="how the file was made, in words")
    opset: int | None = Field(description="the ONNX opset (onnx only)")
    input_name: str
    output_name: str
    input_shape: list[int | str] = Field(description="batch (dynamic), channels, height, width")
    classes: list[str] = Field(description="the class of each logit, in order")
    image_size: int = Field(ge=1)
    mean: list[float] = Field(description="per-channel mean of [0, 1] images subtracted before the model")
    std: list[float] = Field(description="per-channel std divided by after the mean")
    metadata: dict[str, str] = Field(
        description="what the file carries for a deployer (onnx: metadata_props; others: extra files)"
    )
    parity: ExportParity
    latency: dict[str, LatencyMeasurement] = Field(
        description="label → measurement: cpu_b1 … (torch) beside onnxruntime_cpu_b1 … (the exported file's runtime)"
    )
    threads: int = Field(ge=1, description="CPU threads the runtimes were timed with")
    versions: ExportVersions
    seconds: float
    config: ExportConfig


# ----------------------------------------------------------------------------------------- explain


class ExplainedImage(_Result):
    """One explained test image."""

    index: int = Field(ge=0, description="index into the test split")
    true_label: int = Field(ge=0)
    true_class: str


class Prediction(_Result):
    """One model's prediction for one explained image."""

    class_: int = Field(alias="class", ge=0, description="predicted class index")
    class_name: str
    probability: float
    correct: bool


class FeatureMapsSummary(_Result):
    """The most active channels of the feature layer per image."""

    layer: str
    channels: list[list[int]] = Field(description="per image, the channel indices, most active first")
    means: list[list[float]] = Field(description="per image, their mean activations")


class AxisField(_Result):
    """Along one axis, unit i sees input pixels start + i·jump … start + i·jump + size − 1."""

    start: int
    jump: int
    size: int


class FieldUnit(_Result):
    """The most active unit of the layer for one image and the input pixels it sees."""

    channel: int
    y: int
    x: int
    box: tuple[int, int, int, int] = Field(description="[top, left, bottom, right], see box_format")


class ReceptiveFieldSummary(_Result):
    """The receptive field geometry of the feature layer and, per image, its most active unit."""

    layer: str
    size: tuple[int, int] = Field(description="(height, width) of one unit's field in input pixels, unclipped")
    stride: tuple[int, int] = Field(description="input pixels between neighbouring units")
    start: tuple[int, int]
    image_size: tuple[int, int]
    layer_size: tuple[int, int]
    y: AxisField
    x: AxisField
    units: list[FieldUnit]
    box_format: str


class ReceptiveFieldError(_Result):
    """Why the receptive field of the feature layer could not be computed."""

    error: str | None


class ExplainedModel(_Result):
    """What one model predicts and looks at for the explained images."""

    checkpoint: str
    architecture: str
    label: str = Field(description="e.g. vgg11, or vgg11 cut at features.7")
    slim: bool
    cut_point: CutPointRef | None
    layer: str = Field(description="the layer the CAMs are computed at")
    layer_shape: tuple[int, int, int] = Field(description="(channels, height, width) of that layer's output")
    targets: list[list[int]] = Field(description="per image, the explained class indices")
    predictions: list[Prediction]
    accuracy_on_these_images: float
    feature_maps: FeatureMapsSummary
    receptive_field: ReceptiveFieldSummary | ReceptiveFieldError


class ExplainResult(_Result):
    """explain.json: CAMs, input gradients, feature maps and receptive fields of test images, per model."""

    stage: Literal["explain"]
    methods: list[ExplainMethodItem]
    target: ExplainTarget
    classes: list[str]
    split: Literal["test"]
    images: list[ExplainedImage]
    models: dict[ModelKey, ExplainedModel]
    agreement: float | None = Field(description="share of images both models predict alike; null with one model")
    figures: dict[str, str] = Field(description="figure name → PNG file name in the explain folder")
    maps: str = Field(description="file name of the raw maps (npz) in the explain folder")
    device: str
    seconds: float
    config: ExplainConfig


# ----------------------------------------------------------------------------------------- select and sweep

CandidateReason = Literal["knee", "probe", "neighbour", "deeper", "shallower", "sweep"]
"""Why a cut point was retrained: the knee, the shallowest cut whose probe is within the budget, a neighbour of
it, a deeper (or shallower) step of the search, or one cut point of a sweep."""


class Budget(_Result):
    """The accuracy budget and the validation accuracy it sets, from the base model's."""

    description: str = Field(description="the budget in words")
    max_drop: float | None = Field(description="points of validation accuracy allowed below the base; null with min")
    min_accuracy: float | None = Field(description="the lowest validation accuracy accepted (percent); or null")
    base_val_accuracy: float = Field(description="the base model's validation accuracy (a fraction)")
    threshold: float = Field(description="the validation accuracy a slim model must reach (a fraction)")


class Candidate(_Result):
    """One slim model retrained by a search or a sweep: where it is cut, its size, speed and accuracy."""

    cut_point: CutPointRef
    reasons: list[CandidateReason] = Field(description="why it was retrained")
    params: int = Field(ge=0)
    macs: int = Field(ge=0, description="multiply-accumulates of one forward pass of one image")
    latency_ms: float = Field(description="median CPU milliseconds for one image")
    val_accuracy: float = Field(description="validation accuracy after retraining (what the budget is checked on)")
    val_macro_f1: float
    accuracy: float = Field(description="test accuracy after retraining")
    macro_f1: float = Field(description="test macro-F1 after retraining")
    probe_accuracy: float | None = Field(description="the depth probe's validation accuracy at this cut point")
    within_budget: bool
    epochs_run: int = Field(ge=1)
    seconds: float = Field(description="wall-clock seconds of its cut and retraining")
    folder: str = Field(description="the folder of its retraining (model.safetensors, metrics.json, pictures)")


class OtherRules(_Result):
    """What each rule chose, or would have chosen: the same for every run, whichever rule decided."""

    knee: CutPointRef | None = Field(
        description="the knee of the SSIM curve (the paper's rule); null when no analysis was given (a sweep)"
    )
    knee_reason: str | None = Field(description="why a fallback chose the knee's cut; null when kneed found it")
    probe: CutPointRef | None = Field(
        description="the shallowest cut point whose depth probe is within the budget; null when none is, or "
        "the analysis had no probes"
    )
    auto: CutPointRef | None = Field(description="the auto rule's choice, when it ran (or a sweep can tell)")


class SelectResult(_Result):
    """select.json: the auto cut, the smallest retrained slim model within the accuracy budget, and every candidate
    the search retrained on the way."""

    stage: Literal["select"]
    checkpoint: str = Field(description="the chosen slim model, retrained")
    initial_checkpoint: str = Field(description="the chosen slim model as cut, before retraining")
    cut_point: CutPointRef
    cut_points_total: int = Field(ge=1)
    within_budget: bool
    shortfall: float | None = Field(
        description="points of validation accuracy the chosen model lacks to reach the budget; null within it"
    )
    verdict: str = Field(description="the outcome in one sentence, said wherever the run is reported")
    budget: Budget
    candidates: list[Candidate] = Field(description="every retrained candidate, in the order retrained")
    stopped: str = Field(description="why the search stopped")
    rules: OtherRules
    base_params: int = Field(ge=0)
    slim_params: int = Field(ge=0)
    params_kept: float
    seconds: float
    config: SelectConfig
    retrain: TrainConfig

    @property
    def chosen(self) -> Candidate:
        """The candidate the search kept: the one at ``cut_point``."""
        return next(c for c in self.candidates if c.cut_point == self.cut_point)


class SweepBase(_Result):
    """The base model a sweep cuts, measured the same way as its candidates."""

    params: int = Field(ge=0)
    macs: int = Field(ge=0)
    latency_ms: float
    val_accuracy: float
    val_macro_f1: float
    accuracy: float
    macro_f1: float


class SweepPlanResult(_Result):
    """What a service sweep fanned out: its cut points, one sweep_cut job each, the job that gathers them, and the base
    model and budget they are measured against."""

    stage: Literal["sweep_plan"]
    cut_points: list[CutPointRef]
    cut_jobs: list[str] = Field(description="the sweep_cut job of each cut point, in the same order")
    gather_job: str = Field(description="the sweep job that gathers them")
    base: SweepBase
    budget: Budget


class SweepCutResult(_Result):
    """One cut point of a sweep, cut and retrained (a job of the service's fan-out)."""

    stage: Literal["sweep_cut"]
    checkpoint: str
    candidate: Candidate


class SweepResult(_Result):
    """sweep.json: one slim model per chosen cut point, retrained with the same budget; the whole trade-off."""

    stage: Literal["sweep"]
    architecture: str
    base_checkpoint: str
    base: SweepBase
    budget: Budget
    candidates: list[Candidate] = Field(description="one per swept cut point, shallowest first")
    smallest_within_budget: CutPointRef | None = Field(description="the fewest-MACs candidate within the budget")
    rules: OtherRules
    chart: str = Field(description="file name of the trade-off chart")
    seconds: float
    config: SweepConfig
    retrain: TrainConfig


# ----------------------------------------------------------------------------------------- run.json


class RunData(_Result):
    """The data of a run in brief."""

    source: str
    classes: list[str]
    image_size: int = Field(ge=1)
    splits: SplitSizes


class ModelBrief(_Result):
    """One model of a run in brief (the numbers measured by compare, the epochs by train or retrain; a base model
    trained elsewhere and imported has no epochs here)."""

    accuracy: float
    macro_f1: float
    params: int = Field(ge=0)
    macs: int = Field(ge=0)
    checkpoint_bytes: int = Field(ge=0)
    latency_ms: dict[str, float] = Field(description="label (cpu_b1, …) → median milliseconds")
    best_epoch: int | None = Field(ge=0, description="null for a base model trained elsewhere (imported)")
    epochs_run: int | None = Field(ge=1, description="null for a base model trained elsewhere (imported)")


class RunCutPoint(CutPointRef):
    """The cut of a run and the rule that chose it."""

    chosen_by: CutRuleName
    of: int = Field(ge=1, description="cut points of the base model")


class RunSelection(_Result):
    """How the auto rule chose the cut of a run: the budget, whether it was kept, every candidate retrained."""

    file: str = Field(description="select.json, relative to the run folder")
    within_budget: bool
    shortfall: float | None
    verdict: str
    budget: Budget
    candidates: list[Candidate]


class ExplainBrief(_Result):
    """The explain stage of a run in brief; file paths are relative to the run folder."""

    file: str
    methods: list[ExplainMethodItem]
    target: ExplainTarget
    images: int = Field(ge=1, description="images explained")
    layers: dict[ModelKey, str] = Field(description="model → the layer its CAMs are computed at")
    accuracy_on_these_images: dict[ModelKey, float]
    agreement: float | None
    figures: dict[str, str] = Field(description="figure name → path relative to the run folder")


class RunOutputs(_Result):
    """The files of a run."""

    base_checkpoint: str
    slim_checkpoint: str
    analysis: str
    compare: str
    explain: str
    report: str
    export: str | None = Field(None, description="the slim model as a deployable file, when the run exported it")


class MlflowModelVersion(_Result):
    """One model registered by a run: base or slim, as an ONNX version of the registered model."""

    role: Literal["base", "slim"]
    version: str = Field(description="the registered model's version number")
    model_uri: str = Field(description="models:/<name>/<version>, what mlflow.onnx.load_model takes")
    onnx_bytes: int = Field(ge=0)
    parity_max_abs_diff: float = Field(description="largest |logit difference|, ONNX Runtime vs torch")


class MlflowResult(_Result):
    """mlflow.json: where a run was logged and which model versions it registered."""

    stage: Literal["mlflow"]
    tracking_uri: str = Field(description="the tracking server, without credentials")
    experiment: str
    experiment_id: str
    run_id: str
    registered_model: str
    models: list[MlflowModelVersion]
    artifacts: int = Field(ge=0, description="files logged as the run's artifacts")
    seconds: float


class RunSummary(_Result):
    """run.json: the data, both models in brief, the cut and why, the comparison, the explanations, the files."""

    data: RunData
    architecture: str
    base: ModelBrief
    slim: ModelBrief
    cut_point: RunCutPoint
    knee_found: bool
    knee: Knee
    rules: OtherRules | None = Field(
        None, exclude_if=_is_none, description="what each rule chose or would have chosen (older runs lack it)"
    )
    selection: RunSelection | None = Field(None, exclude_if=_is_none, description="the auto rule's search")
    verdict: str | None = Field(
        None, exclude_if=_is_none, description="the outcome in one sentence: whether the slim model kept the accuracy"
    )
    comparison: Comparison
    explain: ExplainBrief
    outputs: RunOutputs


# ----------------------------------------------------------------------------------------- every stage

AnyStageResult = (
    TrainResult
    | RetrainResult
    | AnalyzeResult
    | TruncateResult
    | CompareResult
    | ExplainResult
    | SelectResult
    | SweepPlanResult
    | SweepCutResult
    | SweepResult
    | ImportResult
    | ExportResult
    | MlflowResult
)
"""One stage's result model, any of them."""

StageResult = Annotated[AnyStageResult, Field(discriminator="stage")]
"""The result of any stage, told apart by ``stage`` (what a job records)."""

RESULT_MODELS: dict[StageKind, type[BaseModel]] = {
    "train": TrainResult,
    "analyze": AnalyzeResult,
    "truncate": TruncateResult,
    "retrain": RetrainResult,
    "compare": CompareResult,
    "explain": ExplainResult,
    "select": SelectResult,
    "sweep_plan": SweepPlanResult,
    "sweep_cut": SweepCutResult,
    "sweep": SweepResult,
    "import": ImportResult,
    "export": ExportResult,
    "mlflow": MlflowResult,
}
"""The result model of each stage kind (train and retrain write metrics.json, read it with ``TRAINING_RESULT``)."""

STAGE_RESULT: TypeAdapter[AnyStageResult] = TypeAdapter(StageResult)
"""Validates any stage's result (``STAGE_RESULT.validate_json(text)``) into the model its ``stage`` names."""

TRAINING_RESULT: TypeAdapter[TrainResult | RetrainResult] = TypeAdapter(TrainingResult)
"""Validates a metrics.json into a ``TrainResult`` or a ``RetrainResult``."""
