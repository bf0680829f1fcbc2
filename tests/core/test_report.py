"""The HTML report of a real tiny run: every section, every picture embedded (valid PNG, from an existing file),
self-contained, user strings escaped; a partial run says "not run yet"; extra and explain pictures are shown."""

from __future__ import annotations

import base64
import hashlib
import html
import inspect
import io
import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from layercut.contracts.results import AnalyzeResult, Budget, DepthProbes
from layercut.report import StageInput, render_report, write_run_report

ROOT = Path(__file__).resolve().parents[2]
EVIL_CLASS = "<img src=x onerror=alert(1)>"  # a folder name can hold no '/', so no closing tags
AMP_CLASS = 'cats&dogs "quoted"'
EVIL_DATASET = "<b>my&data<b>"
SECTIONS = ["overview", "data", "base", "gbp", "ssim", "cut", "slim", "compare", "explain"]
"""The sections of a run without depth probes, a select or a sweep stage (a run of an older version)."""


def _with_choice(sections: list[str]) -> list[str]:
    """``sections`` with "Is this the right cut?" after the SSIM section."""
    at = sections.index("ssim") + 1
    return [*sections[:at], "choice", *sections[at:]]


def _sections_of(run_dir: Path) -> list[str]:
    """The sections a run folder's report has: "Is this the right cut?" when the run has a select or a sweep stage,
    or an analysis with depth probes."""
    analysis = run_dir / "analysis" / "analysis.json"
    probes = analysis.is_file() and json.loads(analysis.read_text()).get("depth_probes") is not None
    choice = probes or (run_dir / "select").is_dir() or (run_dir / "sweep").is_dir()
    return _with_choice(SECTIONS) if choice else SECTIONS


class Page(HTMLParser):
    """The parts of the report the tests look at: images, section ids, elements and every text run."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.images: list[dict] = []
        self.sections: list[str] = []
        self.tags: list[str] = []
        self.texts: list[str] = []
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append(tag)
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        if tag == "section":
            self.sections.append(attrs.get("id"))

    def handle_data(self, data: str) -> None:
        self.texts.append(data)

    @property
    def text(self) -> str:
        return " ".join(" ".join(self.texts).split())


def _section(page: str, ident: str) -> str:
    match = re.search(rf'<section id="{ident}">(.*?)</section>', page, re.S)
    assert match, f"no section {ident}"
    return match.group(1)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A real `run_pipeline` at 32 px, smallcnn, 1 epoch, on a folder dataset with hostile class and folder names."""
    from layercut.contracts.configs import AnalyzeConfig, CompareConfig, DataConfig, TrainConfig
    from layercut.local import run_pipeline

    tmp = tmp_path_factory.mktemp("report")
    data = tmp / EVIL_DATASET
    rng = np.random.default_rng(0)
    for label, name in enumerate((EVIL_CLASS, AMP_CLASS)):
        folder = data / name
        folder.mkdir(parents=True)
        for i in range(24):
            pixels = rng.integers(0, 90, (32, 32, 3)) + label * 140
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    out = tmp / "run"
    extra = {}
    if "explain" in inspect.signature(run_pipeline).parameters:  # the pipeline explains base and slim too
        from layercut.contracts.configs import ExplainConfig

        extra["explain"] = ExplainConfig(images=2, device="cpu")
    run_pipeline(
        DataConfig(source=str(data), image_size=32),
        "smallcnn",
        out,
        train=TrainConfig(epochs=1, batch_size=16, device="cpu"),
        analyze=AnalyzeConfig(probes_per_class=2, device="cpu"),
        compare=CompareConfig(device="cpu", latency_repeats=2, latency_warmup=0, latency_batches=[1]),
        **extra,
    )
    assert (out / "run.json").is_file()
    return out


@pytest.fixture(scope="module")
def report(tiny_run) -> tuple[Path, str]:
    path = write_run_report(tiny_run)
    assert path == tiny_run / "report.html"
    return path, path.read_text(encoding="utf-8")


def _check_images(page: str, run_dir: Path) -> list[dict]:
    """Every <img> is a PNG data: URI whose bytes equal a file of the run folder."""
    parsed = Page(page)
    files: dict[str, set[str]] = {}  # digest → names (a copied picture has several)
    for p in run_dir.rglob("*.png"):
        files.setdefault(hashlib.sha256(p.read_bytes()).hexdigest(), set()).add(p.name)
    for img in parsed.images:
        src = img["src"]
        assert src.startswith("data:image/png;base64,"), src[:60]
        data = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
        digest = hashlib.sha256(data).hexdigest()
        assert digest in files, f"{img.get('data-file')} matches no file of the run"
        assert Path(img["data-file"]).name in files[digest]
        assert img.get("alt")
    return parsed.images


def test_every_section_present_and_filled(report, tiny_run) -> None:
    path, page = report
    parsed = Page(page)
    assert parsed.sections == _sections_of(tiny_run)
    for ident in _sections_of(tiny_run):  # the table of contents links to every section
        assert f'href="#{ident}"' in page
    run = json.loads((tiny_run / "run.json").read_text())
    text = parsed.text
    # the data
    data = _section(page, "data")
    assert "Images per class and split" in data and "all classes" in data
    # base and slim models: metrics and their pictures
    for ident, key in (("base", "base"), ("slim", "slim")):
        body = _section(page, ident)
        assert f"{run[key]['accuracy']:.1%}" in body and "Macro-F1" in body
        for name in ("training_curves.png", "confusion_matrix.png", "roc_curves.png"):
            assert f'data-file="{name}"' in body, (ident, name)
    # GBP maps, SSIM curve and knee
    assert 'data-file="gbp_grid.png"' in _section(page, "gbp") and "knee" in _section(page, "gbp")
    ssim = _section(page, "ssim")
    assert 'data-file="ssim_curve.png"' in ssim and 'data-file="similarity_matrix.png"' in ssim
    # what was cut and why
    cut = _section(page, "cut")
    assert run["cut_point"]["name"] in cut and "Why" in cut and "kept" in cut
    if run["cut_point"].get("chosen_by") == "auto":
        assert "chosen by the accuracy budget (auto)" in cut
        choice = _section(page, "choice")
        assert run["verdict"] in text and 'data-file="trade_off.png"' in choice
        assert all(c["cut_point"]["name"] in choice for c in run["selection"]["candidates"])
    elif not run["knee_found"]:
        assert "no knee found" in cut
    # the comparison table
    compare = _section(page, "compare")
    for row in (
        "Test accuracy",
        "Macro-F1",
        "Parameters",
        "MACs per image",
        "Checkpoint size",
        "Latency, CPU, batch 1",
    ):
        assert row in compare
    assert f"{run['base']['params']:,}" in compare and f"{run['slim']['params']:,}" in compare
    assert 'data-file="compare.png"' in compare
    explain = _section(page, "explain")
    if (tiny_run / "explain" / "explain.json").is_file():
        figures = json.loads((tiny_run / "explain" / "explain.json").read_text())["figures"]
        assert figures and all(f'data-file="{file}"' in explain for file in figures.values())
        assert "Not run yet" not in explain
    else:  # a pipeline without the explain stage: said so, no failure
        assert "Not run yet" in explain
    assert "smallcnn" in text


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_images_are_embedded_pngs_of_existing_files(report, tiny_run) -> None:
    """Every picture of the run is in the report, and none twice. Copies count once (the select stage keeps the chosen
    slim model's pictures beside select.json, and the run copies them to slim/); the pictures of each candidate's
    retraining (select/candidates/…) are summed up by the candidates' table, not shown; the analysis' depth-probe
    picture (drawn with the default budget) gives way to select's (drawn with the run's budget)."""
    _, page = report
    images = _check_images(page, tiny_run)
    shown = [_digest(base64.b64decode(img["src"].split(",", 1)[1])) for img in images]
    superseded = (
        {tiny_run / "analysis" / "depth_probes.png"} if (tiny_run / "select" / "depth_probes.png").is_file() else set()
    )
    pictures = [
        p for p in tiny_run.rglob("*.png") if "candidates" not in p.relative_to(tiny_run).parts and p not in superseded
    ]
    assert {_digest(p.read_bytes()) for p in pictures} == set(shown)
    assert len(shown) == len(set(shown))


def test_self_contained(report) -> None:
    _, page = report
    assert "http://" not in page and "https://" not in page
    assert 'src="/' not in page and "src='/" not in page and "url(" not in page and "@import" not in page
    parsed = Page(page)
    assert "script" not in parsed.tags and "link" not in parsed.tags and "iframe" not in parsed.tags
    assert all(img["src"].startswith("data:") for img in parsed.images)
    assert "<style>" in page and "@media print" in page


def test_user_strings_escaped(report) -> None:
    _, page = report
    assert EVIL_CLASS not in page and EVIL_DATASET not in page and AMP_CLASS not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "cats&amp;dogs &quot;quoted&quot;" in page
    assert "&lt;b&gt;my&amp;data&lt;b&gt;" in page
    parsed = Page(page)
    assert {img["src"][:5] for img in parsed.images} == {"data:"}  # the class name made no <img>
    assert "b" not in parsed.tags
    assert EVIL_CLASS in parsed.text and AMP_CLASS in parsed.text  # and it reads back as the user wrote it


def test_partial_run_says_not_run_yet(tiny_run, tmp_path) -> None:
    partial = tmp_path / "partial"
    shutil.copytree(tiny_run / "base", partial / "base")
    page = write_run_report(partial).read_text(encoding="utf-8")
    parsed = Page(page)
    assert parsed.sections == SECTIONS
    assert "Base test accuracy" in page and 'data-file="training_curves.png"' in _section(page, "base")
    for ident in ("gbp", "ssim", "cut", "slim", "compare", "explain"):
        body = _section(page, ident)
        assert "Not run yet" in body and "<img" not in body, ident
    assert "not run yet" in _section(page, "overview")
    _check_images(page, partial)


def test_unknown_pictures_and_explanations_are_shown(tiny_run, tmp_path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "report.html").unlink(missing_ok=True)
    shutil.copy(run / "base" / "roc_curves.png", run / "base" / "new_plot_someone_added.png")
    explain = run / "explain"
    shutil.rmtree(explain, ignore_errors=True)
    explain.mkdir()
    shutil.copy(run / "base" / "confusion_matrix.png", explain / "cam_base_vs_slim.png")
    shutil.copy(run / "slim" / "roc_curves.png", explain / "guided_backprop.png")
    shutil.copy(run / "slim" / "training_curves.png", explain / "extra.png")
    (explain / "notes.txt").write_text("not a picture")
    (explain / "explain.json").write_text(
        json.dumps(
            {
                "methods": ["gradcam", EVIL_CLASS],
                "figures": {
                    "Grad-CAM, base vs slim": "cam_base_vs_slim.png",
                    "guided backprop": "guided_backprop.png",
                    "escape attempt": "../base/roc_curves.png",
                    "missing": "nope.png",
                },
            }
        )
    )
    page = write_run_report(run).read_text(encoding="utf-8")
    base = _section(page, "base")
    assert 'data-file="new_plot_someone_added.png"' in base and "New plot someone added" in base
    body = _section(page, "explain")
    order = [body.index(f'data-file="{n}"') for n in ("cam_base_vs_slim.png", "guided_backprop.png", "extra.png")]
    assert order == sorted(order)  # listed figures first, in explain.json's order, then the others
    assert "Grad-CAM, base vs slim" in body and "gradcam" in body
    assert "../base/roc_curves.png" in body and "not a PNG in the folder" in body  # named, not embedded
    assert "Not run yet" not in body and EVIL_CLASS not in page
    _check_images(page, run)


def test_real_explanations_side_by_side(tiny_run, tmp_path) -> None:
    """The explain stage's own output (base and slim on the same images) renders as pairs, with both predictions."""
    explain = pytest.importorskip("layercut.stages.explain")
    from layercut.contracts.configs import DataConfig, ExplainConfig
    from layercut.stages.stages import load_data

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    if not (run / "explain" / "explain.json").is_file():  # run_pipeline without the explain stage
        dataset = load_data(DataConfig(source=str(tiny_run.parent / EVIL_DATASET), image_size=32))
        explain.explain_stage(
            run / "base" / "model.safetensors",
            dataset,
            ExplainConfig(images=2, device="cpu"),
            run / "explain",
            compare_checkpoint=run / "slim" / "model.safetensors",
        )
    listed = json.loads((run / "explain" / "explain.json").read_text())["figures"]
    page = write_run_report(run).read_text(encoding="utf-8")
    body = _section(page, "explain")
    for file in listed.values():
        assert f'data-file="{file}"' in body
    assert "Base vs slim, side by side" in body and 'data-file="base_vs_slim.png"' in body
    pairs = re.search(r'<div class="figs pairs">(.*?)</div>', body, re.S).group(1)
    assert 'data-file="cams_base.png"' in pairs and 'data-file="cams_slim.png"' in pairs
    for grid in ("cams_base.png", "cams_slim.png"):  # methods × images grids take the whole row to stay legible
        assert re.search(rf'<figure class="wide"><img [^>]*data-file="{grid}"', body), grid
    assert "base prediction" in body and "slim prediction" in body
    assert EVIL_CLASS not in page
    _check_images(page, run)


def test_render_report_from_job_like_stages(tiny_run, tmp_path) -> None:
    """The API's way in: stages with statuses; unfinished ones show their status, the rest render."""
    stages = [
        StageInput("train", tiny_run / "base", status="succeeded", label="step 0: job a"),
        StageInput("analyze", tiny_run / "analysis", status="succeeded", step=1),
        StageInput(
            "truncate",
            tmp_path / "nothing",
            status="failed",
            step=2,
            error_code="bad_<cut>",
            error_message="boom & <bust>",
        ),
        StageInput("retrain", None, status="running", step=3, percent=42.0, stage="retrain", message="epoch 1/3"),
        StageInput("compare", None, status="queued", step=4),
    ]
    page = render_report(stages, "Pipeline <x>", details=[("Pipeline", "<id>")], status="running")
    parsed = Page(page)
    sections = ["overview", "data", "base", "gbp", "ssim", "cut", "slim", "compare"]
    probes = json.loads((tiny_run / "analysis" / "analysis.json").read_text()).get("depth_probes") is not None
    assert parsed.sections == (_with_choice(sections) if probes else sections)
    assert "failed — bad_&lt;cut&gt;: boom &amp; &lt;bust&gt;" in _section(page, "cut")
    assert "Not run yet: the retrain step is running (42% · retrain · epoch 1/3)." in _section(page, "slim")
    assert "Not run yet: the compare step is queued" in _section(page, "compare")
    assert "<title>Pipeline &lt;x&gt;</title>" in page and "&lt;id&gt;" in page
    _check_images(page, tiny_run)


def test_module_entry_point_is_torch_free(tiny_run, tmp_path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run / "base", run / "base")
    code = (
        "import sys, runpy; sys.argv = ['layercut.report', sys.argv[1]]; "
        "import core.report.__main__ as m; rc = m.main([sys.argv[1]]); "
        "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(run)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(run / "report.html") and (run / "report.html").is_file()
    missing = subprocess.run(
        [sys.executable, "-m", "layercut.report", str(tmp_path / "absent")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 2 and "not a folder" in missing.stderr


SCRIPT = "<script>alert('x')</script>"


def test_templates_autoescape_every_string_from_data(tmp_path) -> None:
    """Class names, a caption from explain.json, the title and the details pass through the templates escaped."""
    train = tmp_path / "train"
    train.mkdir()
    Image.new("RGB", (40, 20), (200, 40, 40)).save(train / "training_curves.png")
    classes = [SCRIPT, "plain"]
    data = {"name": SCRIPT, "classes": classes, "per_class": {"train": {c: 3 for c in classes}}}
    (train / "metrics.json").write_text(json.dumps({"architecture": SCRIPT, "accuracy": 0.5, "data": data}))
    explain = tmp_path / "explain"
    explain.mkdir()
    Image.new("RGB", (40, 20), (40, 200, 40)).save(explain / "cams_base.png")
    figures = {"cams_base": {"file": "cams_base.png", "caption": SCRIPT}}
    (explain / "explain.json").write_text(json.dumps({"methods": [SCRIPT], "figures": figures}))
    stages = [StageInput("train", train, label=SCRIPT), StageInput("explain", explain, status="succeeded")]
    page = render_report(stages, f"Title {SCRIPT}", subtitle=SCRIPT, details=[(SCRIPT, SCRIPT)], status=SCRIPT)
    assert "<script" not in page and "</script" not in page
    assert page.count("&lt;script&gt;alert(") >= 10
    parsed = Page(page)
    assert "script" not in parsed.tags
    assert SCRIPT in parsed.text  # and it reads back as written
    (picture,) = [img for img in parsed.images if img["data-file"] == "cams_base.png"]
    assert picture["alt"] == SCRIPT  # the attribute too is escaped, not cut short


class Attributes(HTMLParser):
    """Every attribute of every element of a page, as (tag, attribute, value)."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[str, str, str]] = []
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.found += [(tag, name, value or "") for name, value in attrs]


def test_no_external_references(report) -> None:
    """Every src is an embedded data: URI and every href a link inside the page: nothing is fetched."""
    _, page = report
    found = Attributes(page).found
    fetched = [value for _, name, value in found if name in ("src", "srcset", "poster", "data", "action", "background")]
    links = [value for _, name, value in found if name in ("href", "xlink:href", "formaction")]
    assert fetched and all(value.startswith("data:image/png;base64,") for value in fetched)
    assert links and all(value.startswith("#") for value in links)
    assert not any(name == "style" or name.startswith("on") for _, name, _ in found)  # no inline styles or handlers
    assert not re.search(r"https?://", page, re.I)


WARN_NOTE = re.compile(r'<div class="note warn">(.*?)</div>', re.S)


def _notes(body: str) -> list[str]:
    return [" ".join(n.split()) for n in WARN_NOTE.findall(body)]


def test_valid_results_read_with_no_validation_note(report) -> None:
    """Every stage's result of a real run validates: no section says its file could not be read in full."""
    _, page = report
    assert "does not match the" not in page and "is not valid JSON" not in page and "did not validate" not in page


def test_damaged_analysis_json_is_named_and_the_other_sections_render(tiny_run, tmp_path) -> None:
    """An analysis.json that does not validate: the analysis' sections show what they can under a note naming the
    file and the first validation error; every other section renders as from the undamaged run."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    clean = write_run_report(run).read_text(encoding="utf-8")
    path = run / "analysis" / "analysis.json"
    analysis = json.loads(path.read_text())
    analysis["probes"]["seed"] = "not a seed"  # the first error, in the order of the model's fields
    del analysis["knee"]["found"]
    path.write_text(json.dumps(analysis))
    page = write_run_report(run).read_text(encoding="utf-8")
    assert Page(page).sections == _sections_of(tiny_run) and "Not run yet" not in page
    for ident in ("gbp", "ssim"):
        body = _section(page, ident)
        (note, *_) = _notes(body)
        assert note.startswith("analysis/analysis.json does not match the analyze result"), note
        assert "probes.seed: Input should be a valid integer" in note and "(and 1 more problem)" in note
        assert "badge-done" in body  # the stage ran: its section is drawn, not "not run yet"
    gbp = _section(page, "gbp")
    assert 'data-file="gbp_grid.png"' in gbp and analysis["cut_points"][0]["name"] in gbp  # what could be read
    assert "seed —" in gbp  # the field that does not validate is left empty
    assert 'data-file="ssim_curve.png"' in _section(page, "ssim")
    for ident in ("data", "base", "slim", "compare", "explain"):
        assert _section(page, ident) == _section(clean, ident), ident
    cut = _section(page, "cut")
    assert analysis["cut_point"]["name"] in cut and not _notes(cut)
    assert "(its result did not validate: see below)" in _section(page, "overview")
    _check_images(page, run)


def test_result_file_that_is_not_json_is_named_and_its_pictures_still_shown(tiny_run, tmp_path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "analysis" / "analysis.json").write_text('{"stage": "analyze", "cut_points": [')
    (run / "compare" / "compare.json").write_text("[1, 2]")
    page = write_run_report(run).read_text(encoding="utf-8")
    gbp = _section(page, "gbp")
    assert _notes(gbp)[0].startswith("analysis/analysis.json is not valid JSON (Expecting value")
    assert "Not run yet" not in gbp and 'data-file="gbp_grid.png"' in gbp
    compare = _section(page, "compare")
    assert _notes(compare)[0].startswith("compare/compare.json holds an array, not a JSON object.")
    assert 'data-file="compare.png"' in compare
    base = _section(page, "base")
    run_json = json.loads((run / "run.json").read_text())
    assert f"{run_json['base']['accuracy']:.1%}" in base and not _notes(base)
    assert run_json["cut_point"]["name"] in _section(page, "cut")
    _check_images(page, run)


def test_stored_results_newer_or_hand_made(tiny_run) -> None:
    """The API's way in, without files: a job's stored result (with the model_id the job engine adds) reads
    like its file; one of a newer version (an unknown key) shows what it can, under a note naming it."""
    metrics = json.loads((tiny_run / "base" / "metrics.json").read_text())
    stored = StageInput("train", None, summary={**metrics, "model_id": "3f0c"}, status="succeeded", label="job a")
    page = render_report([stored], "stored")
    assert "does not match" not in page and f"{metrics['accuracy']:.1%}" in _section(page, "base")
    newer = StageInput(
        "train", None, summary={**metrics, "calibration": {"ece": 0.1}}, status="succeeded", label="job b"
    )
    page = render_report([newer], "newer")
    for ident in ("data", "base"):
        body = _section(page, ident)
        (note,) = _notes(body)
        assert note.startswith("The stored result of job b does not match the train result"), note
        assert "calibration: Extra inputs are not permitted" in note
    assert f"{metrics['accuracy']:.1%}" in _section(page, "base") and "Images per class and split" in page
    wrong = StageInput("train", None, summary={"stage": "train", "accuracy": "high"}, status="succeeded")
    body = _section(render_report([wrong], "wrong"), "base")
    assert "The job&#x27;s stored result does not match" in body and "Not run yet" not in body


# ----------------------------------------------------------------------------- is this the right cut?

SHORTFALL = re.compile(r'<div class="verdict shortfall"[^>]*>(.*?)</div>', re.S)


def _candidates(names: list[str], threshold: float, within_from: int, chosen: int):
    """One candidate per cut point name, deeper ones bigger and better; those from ``within_from`` on are within
    the budget."""
    from layercut.contracts.results import Candidate
    from layercut.contracts.spec import CutPointRef

    reasons = ["probe", "neighbour", "knee", "deeper", "shallower"]
    out = []
    for i, name in enumerate(names):
        val = threshold + 0.004 if i >= within_from else threshold - 0.08 / (i + 1)
        out.append(
            Candidate(
                cut_point=CutPointRef(index=i, name=name),
                reasons=[reasons[i % len(reasons)]] + (["knee"] if i == chosen and i != 2 else []),
                params=1000 * 4**i,
                macs=400_000 * 3**i,
                latency_ms=1.5 * (i + 1),
                val_accuracy=val,
                val_macro_f1=val - 0.01,
                accuracy=val - 0.003,
                macro_f1=val - 0.012,
                probe_accuracy=0.6 + 0.1 * i,
                within_budget=i >= within_from,
                epochs_run=2,
                seconds=3.0 + i,
                folder=f"/worker/artifacts/t/job/candidates/cut-{i:02d}-{name}",
            )
        )
    return out


def _fabricate_choice(run: Path, *, within: bool, sweep: bool) -> dict:
    """Turn a copy of the tiny run into one cut by the auto rule: depth probes in analysis.json (with their picture),
    a select stage of every cut point but the last (the chosen model's files beside select.json, as the select stage
    writes them), a sweep when asked, and run.json saying so. Returns what was written, for the checks."""
    from layercut.contracts.configs import SelectConfig, SweepConfig, TrainConfig
    from layercut.contracts.results import (
        AnalyzeResult,
        Budget,
        DepthProbe,
        DepthProbes,
        DepthProbeSeconds,
        OtherRules,
        RunSelection,
        RunSummary,
        SelectResult,
        SweepBase,
        SweepResult,
    )
    from layercut.contracts.spec import CutPointRef
    from layercut.stages import plots

    for folder in ("select", "sweep"):
        shutil.rmtree(run / folder, ignore_errors=True)
    (run / "report.html").unlink(missing_ok=True)
    analysis_path = run / "analysis" / "analysis.json"
    analysis = AnalyzeResult.model_validate_json(analysis_path.read_text())
    names = [p.name for p in analysis.cut_points]
    probes = DepthProbes(
        method="logistic regression on pooled features",
        train_images=32,
        val_images=8,
        base_val_accuracy=0.9,
        points=[
            DepthProbe(index=i, name=name, features=8 * (i + 1), train_accuracy=1.0, val_accuracy=0.6 + 0.1 * i)
            for i, name in enumerate(names)
        ],
        seconds=DepthProbeSeconds(features=0.5, fit=0.2),
    )
    analysis_path.write_text(analysis.model_copy(update={"depth_probes": probes}).model_dump_json(indent=2))
    budget = Budget(
        description="at most 1 point of validation accuracy below the base model",
        max_drop=1.0,
        min_accuracy=None,
        base_val_accuracy=0.9,
        threshold=0.89,
    )
    knee = CutPointRef(index=analysis.knee.index, name=names[analysis.knee.index])
    plots.plot_depth_probes(
        probes.curve,
        analysis.curves.cut,
        names,
        knee_index=knee.index,
        threshold=budget.threshold,
        base_accuracy=budget.base_val_accuracy,
        probe_index=None,
        path=run / "analysis" / "depth_probes.png",
        title="depth probes",
    )
    searched = names[:-1]  # at least 3 candidates: smallcnn has 4 cut points
    chosen = 1 if within else len(searched) - 1
    candidates = _candidates(searched, budget.threshold, 1 if within else len(searched), chosen)
    rules = OtherRules(knee=knee, knee_reason="a fallback chose it", probe=None, auto=candidates[chosen].cut_point)
    if within:
        verdict = f"Kept the accuracy: cut at {searched[chosen]}, validation 89.4% against the base's 90.0%."
    else:
        verdict = f"No slim model kept the accuracy: the best, cut at {searched[chosen]}, is 0.4 points short."
    select = SelectResult(
        stage="select",
        checkpoint="/worker/select/model.safetensors",
        initial_checkpoint="/worker/select/initial.safetensors",
        cut_point=candidates[chosen].cut_point,
        cut_points_total=len(names),
        within_budget=within,
        shortfall=None if within else 0.4,
        verdict=verdict,
        budget=budget,
        candidates=candidates,
        stopped="the next shallower cut point scored below the threshold",
        rules=rules,
        base_params=60_000,
        slim_params=candidates[chosen].params,
        params_kept=candidates[chosen].params / 60_000,
        seconds=12.5,
        config=SelectConfig(),
        retrain=TrainConfig(epochs=1),
    )
    folder = run / "select"
    folder.mkdir()
    for file in (run / "slim").iterdir():  # the chosen model's files, beside select.json
        if file.suffix in (".json", ".png"):
            shutil.copy(file, folder / file.name)
    (folder / "select.json").write_text(select.model_dump_json(indent=2))
    _budget_probe_picture(probes, analysis, budget, folder / "depth_probes.png", "select's budget")
    plots.plot_trade_off(candidates, budget, rules, folder / "trade_off.png", "auto", chosen=select.cut_point)
    written: dict = {"select": select, "names": names}
    if sweep:
        swept = _candidates(names, budget.threshold, 2, 2)
        base = SweepBase(
            params=60_000,
            macs=9_000_000,
            latency_ms=9.0,
            val_accuracy=0.9,
            val_macro_f1=0.89,
            accuracy=0.9,
            macro_f1=0.9,
        )
        result = SweepResult(
            stage="sweep",
            architecture="smallcnn",
            base_checkpoint="base/model.safetensors",
            base=base,
            budget=budget,
            candidates=swept,
            smallest_within_budget=swept[2].cut_point,
            rules=rules,
            chart="trade_off.png",
            seconds=30.0,
            config=SweepConfig(),
            retrain=TrainConfig(epochs=1),
        )
        (run / "sweep").mkdir()
        (run / "sweep" / "sweep.json").write_text(result.model_dump_json(indent=2))
        _budget_probe_picture(probes, analysis, budget, run / "sweep" / "depth_probes.png", "sweep's budget")
        plots.plot_trade_off(
            swept, budget, rules, run / "sweep" / "trade_off.png", "sweep", base=base, chosen=swept[2].cut_point
        )
        written["sweep"] = result
    summary = RunSummary.model_validate_json((run / "run.json").read_text())
    cut = summary.cut_point.model_copy(update={"index": chosen, "name": searched[chosen], "chosen_by": "auto"})
    selection = RunSelection(
        file="select/select.json",
        within_budget=within,
        shortfall=select.shortfall,
        verdict=verdict,
        budget=budget,
        candidates=candidates,
    )
    summary = summary.model_copy(update={"cut_point": cut, "rules": rules, "selection": selection, "verdict": verdict})
    (run / "run.json").write_text(summary.model_dump_json(indent=2))
    return written


def _budget_probe_picture(probes: DepthProbes, analysis: AnalyzeResult, budget: Budget, path: Path, title: str) -> None:
    """A depth-probe picture as select and sweep draw it (the budget band and the probe's choice), titled apart."""
    from layercut.stages import plots

    plots.plot_depth_probes(
        probes.curve,
        analysis.curves.cut,
        [p.name for p in analysis.cut_points],
        knee_index=analysis.knee.index,
        threshold=budget.threshold,
        base_accuracy=budget.base_val_accuracy,
        probe_index=3,
        path=path,
        title=title,
    )


def _embedded(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _chosen_rows(body: str) -> list[str]:
    return [
        " ".join(re.sub(r"<[^>]+>", " ", r).split()) for r in re.findall(r'<tr class="chosen">(.*?)</tr>', body, re.S)
    ]


def test_cut_choice_within_budget_with_a_sweep(tiny_run, tmp_path) -> None:
    """An auto run kept within its budget, with a sweep: the section shows the probe curve, the verdict, the search's
    chart and every candidate (the chosen one highlighted), the sweep likewise, and what each rule chose."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    written = _fabricate_choice(run, within=True, sweep=True)
    select, sweep = written["select"], written["sweep"]
    page = write_run_report(run).read_text(encoding="utf-8")
    assert Page(page).sections == _with_choice(SECTIONS)
    body = _section(page, "choice")
    assert "Is this the right cut?" in page and "from select/" in body
    assert 'data-file="depth_probes.png"' in body and "depth_probes.png" not in _section(page, "ssim")
    # one depth-probe picture on the page: the one select drew with the run's budget, not the analysis' or sweep's
    assert page.count('data-file="depth_probes.png"') == 1
    assert _embedded(run / "select" / "depth_probes.png") in body
    assert _embedded(run / "analysis" / "depth_probes.png") not in page
    assert _embedded(run / "sweep" / "depth_probes.png") not in page
    assert body.count('data-file="trade_off.png"') == 2  # the search's chart and the sweep's
    assert '<div class="verdict kept"' in body and select.verdict.replace("'", "&#x27;") in body
    assert not SHORTFALL.search(page)
    for candidate in [*select.candidates, *sweep.candidates]:
        assert candidate.cut_point.name in body
    chosen, smallest, this_run = _chosen_rows(body)
    assert chosen.startswith(f"{select.cut_point.index} {select.cut_point.name} chosen")
    assert smallest.startswith(f"2 {written['names'][2]} smallest within budget")
    assert this_run.startswith("Auto this run")
    assert "at most 1 point of validation accuracy below the base model: validation accuracy ≥ 89.0%" in body
    assert "the next shallower cut point scored below the threshold" in body  # why the search stopped
    assert "What the other rules would have chosen" in body and "a fallback chose it" in body
    assert "8.0 pts short" in body and "4.0 pts short" in body  # a candidate below the budget says by how much
    overview = _section(page, "overview")
    assert '<div class="verdict kept"' in overview and overview.index("verdict") < overview.index('class="cards"')
    assert "select the cut (accuracy budget)" in overview and "sweep the cut points" in overview
    _check_images(page, run)


def test_cut_choice_shortfall_is_impossible_to_miss(tiny_run, tmp_path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    written = _fabricate_choice(run, within=False, sweep=False)
    page = write_run_report(run).read_text(encoding="utf-8")
    body, overview = _section(page, "choice"), _section(page, "overview")
    for where in (body, overview):
        (verdict,) = SHORTFALL.findall(where)
        assert "not kept" in verdict and "0.4 points short" in verdict
    assert "Budget not kept (0.4 pts short)" in body
    assert "NOT within the budget" in overview  # the stage's line too
    assert "The sweep" not in body and all(c.cut_point.name in body for c in written["select"].candidates)
    _check_images(page, run)


def test_cut_choice_of_a_service_pipeline(tiny_run, tmp_path) -> None:
    """Jobs of kind select and sweep render: the select job stands for truncate and retrain, its chosen model's
    pictures shown once, in the slim model's section."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    written = _fabricate_choice(run, within=True, sweep=True)
    kinds = [
        ("train", "base"),
        ("analyze", "analysis"),
        ("select", "select"),
        ("compare", "compare"),
        ("sweep", "sweep"),
    ]
    stages = [
        StageInput(kind, run / folder, status="succeeded", label=f"step {i}: job {kind}", step=i)
        for i, (kind, folder) in enumerate(kinds)
    ]
    page = render_report(stages, "Pipeline")
    assert Page(page).sections == ["overview", "data", "base", "gbp", "ssim", "choice", "cut", "slim", "compare"]
    assert "from step 2: job select" in _section(page, "choice")
    slim = _section(page, "slim")
    assert 'data-file="training_curves.png"' in slim and 'data-file="trade_off.png"' not in slim
    assert written["select"].cut_point.name in _section(page, "cut")
    _check_images(page, run)
    shown = Page(page).images
    assert len({img["src"] for img in shown}) == len(shown)  # no picture twice
    alone = render_report([StageInput("sweep", run / "sweep", status="succeeded", label="job s")], "a sweep job")
    assert Page(alone).sections == ["overview", "choice"] and "smallest within budget" in _section(alone, "choice")
    queued = render_report([StageInput("select", None, status="queued")], "queued")
    assert "Not run yet: the select step is queued" in _section(queued, "choice")
    running = [
        stages[1],
        StageInput("select", None, status="running", step=2, percent=40.0, stage="retrain", message="cut at x"),
    ]
    body = _section(render_report(running, "running"), "choice")  # the probe curve shows while the search runs
    assert "from step 1: job analyze" in body and 'data-file="depth_probes.png"' in body
    assert "Not run yet: the select step is running (40% · retrain · cut at x)." in body


def test_cut_choice_of_a_knee_run_with_depth_probes(tiny_run, tmp_path) -> None:
    """A run cut at the knee, whose analysis has depth probes: the section follows the analysis, says what the knee
    and the probes point to, and run.json's rules say which rule cut it."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    _fabricate_choice(run, within=True, sweep=False)
    shutil.rmtree(run / "select")
    summary = json.loads((run / "run.json").read_text())
    summary["cut_point"]["chosen_by"] = "knee"
    del summary["selection"], summary["verdict"]
    (run / "run.json").write_text(json.dumps(summary))
    page = write_run_report(run).read_text(encoding="utf-8")
    body = _section(page, "choice")
    assert "from analysis/" in body and 'data-file="depth_probes.png"' in body
    assert "The knee of the SSIM curve points to" in body and "This run was cut by the knee." in body
    (this_run,) = _chosen_rows(body)
    assert this_run.startswith("SSIM knee this run")
    assert 'class="verdict' not in page
    _check_images(page, run)


def test_older_run_without_probes_select_or_sweep_renders_as_before(tiny_run, tmp_path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    for folder in ("select", "sweep"):
        shutil.rmtree(run / folder, ignore_errors=True)
    analysis_path = run / "analysis" / "analysis.json"
    analysis = json.loads(analysis_path.read_text())
    analysis.pop("depth_probes", None)
    analysis_path.write_text(json.dumps(analysis))
    (run / "analysis" / "depth_probes.png").unlink(missing_ok=True)
    summary = json.loads((run / "run.json").read_text())
    for key in ("rules", "selection", "verdict"):
        summary.pop(key, None)
    summary["cut_point"]["chosen_by"] = "knee"
    (run / "run.json").write_text(json.dumps(summary))
    truncate = json.loads((run / "slim" / "truncate.json").read_text())
    (run / "slim" / "truncate.json").write_text(json.dumps({**truncate, "chosen_by": "knee"}))
    page = write_run_report(run).read_text(encoding="utf-8")
    assert Page(page).sections == SECTIONS
    assert 'class="verdict' not in page and "select the cut" not in page and "Is this the right cut?" not in page
    _check_images(page, run)


def test_a_slower_slim_model_says_why_in_the_overview(tiny_run, tmp_path) -> None:
    """The overview's latency card of a slim model that timed slower than its base says so and why (fewer MACs
    but overhead and noise at this size), instead of a bare "× slower"."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "report.html").unlink(missing_ok=True)
    path = run / "compare" / "compare.json"
    compared = json.loads(path.read_text())
    for change in compared["comparison"]["latency"].values():
        change["speedup"], change["slim_ms"] = 0.5, 2 * change["base_ms"]
    compared["comparison"]["reduction_percent"]["macs"] = 80.0
    path.write_text(json.dumps(compared))
    overview = _section(write_run_report(run).read_text(encoding="utf-8"), "overview")
    text = html.unescape(" ".join(re.sub(r"<[^>]+>", " ", overview).split()))
    assert "2.00× slower" in text and "slower although it does 20.0% of the base's MACs" in text, text


def test_the_mlflow_step_shows_where_the_run_was_logged_and_the_versions() -> None:
    """A pipeline that ends in an mlflow step: its section names the server, experiment, run and registered
    model, and one row per model version (base first) with its URI, ONNX size and parity; no link is made."""
    logged = {
        "stage": "mlflow",
        "tracking_uri": "http://mlflow.internal:5000",
        "experiment": "slimming",
        "experiment_id": "7",
        "run_id": "a1b2c3d4",
        "registered_model": "resnet-slim",
        "models": [
            {
                "role": "slim",
                "version": "4",
                "model_uri": "models:/resnet-slim/4",
                "onnx_bytes": 634_000,
                "parity_max_abs_diff": 1.7e-5,
            },
            {
                "role": "base",
                "version": "3",
                "model_uri": "models:/resnet-slim/3",
                "onnx_bytes": 44_700_000,
                "parity_max_abs_diff": 2.4e-6,
            },
        ],
        "artifacts": 23,
        "seconds": 4.2,
    }
    page = render_report(
        [StageInput("mlflow", None, summary={**logged, "model_id": None}, status="succeeded", step=6)], "logged"
    )
    section = page[page.index('id="mlflow"') :]
    text = " ".join(re.sub(r"<[^>]+>", " ", html.unescape(section)).split())
    assert "Logged to MLflow" in page and "problem" not in section[:200]
    for fragment in ("http://mlflow.internal:5000", "slimming (id 7)", "a1b2c3d4", "resnet-slim", "23"):
        assert fragment in text, fragment
    assert text.index("models:/resnet-slim/3") < text.index("models:/resnet-slim/4")  # base first
    assert "base 3 models:/resnet-slim/3 44.7 MB 2.4e-06" in text and "slim 4 models:/resnet-slim/4 634 kB" not in text
    assert "slim 4 models:/resnet-slim/4 634 KB 1.7e-05" in text
    assert "href=" not in section  # the server is named, not linked: the page makes no external references
    assert "log the run to MLflow" in page  # the overview's list of steps
