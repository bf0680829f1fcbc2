"""GET /v1/jobs/{id}/report and /v1/pipelines/{id}/report: self-contained HTML rendered from the job rows and their
folders; a running pipeline shows what is done and what is running or queued; isolation, 404s and 401."""

from __future__ import annotations

import base64
import json
import re
import struct
import uuid
import zlib

from layercut.store.models import Job, Pipeline

EVIL = "<img src=x onerror=alert(1)>"
CLASSES = [EVIL, "cats&dogs"]


def png(width: int = 48, height: int = 24, rgb: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    """A real (tiny) PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def report_of(accuracy: float) -> dict:
    return {
        "accuracy": accuracy,
        "macro_f1": accuracy - 0.1,
        "confusion_matrix": [[5, 1], [2, 4]],
        "per_class": {c: {"precision": 0.8, "recall": 0.7, "f1": 0.75, "support": 6} for c in CLASSES},
        "most_confused": [{"true": CLASSES[1], "predicted": CLASSES[0], "count": 2, "share_of_true": 0.33}],
    }


def model_summary(stage: str, accuracy: float, params: int, cut: dict | None = None) -> dict:
    return {
        "stage": stage,
        "architecture": "smallcnn",
        "cut_point": cut,
        "classes": CLASSES,
        "params": params,
        "accuracy": accuracy,
        "macro_f1": accuracy - 0.1,
        "best_epoch": 1,
        "epochs_run": 1,
        "device": "cpu",
        "val": report_of(accuracy),
        "test": report_of(accuracy),
        "data": {
            "name": "pets",
            "source": "pets",
            "kind": "folder",
            "classes": CLASSES,
            "image_size": 32,
            "sizes": {"train": 20, "val": 6, "test": 6},
            "per_class": {s: {c: n // 2 for c in CLASSES} for s, n in (("train", 20), ("val", 6), ("test", 6))},
        },
    }


ANALYSIS = {
    "stage": "analyze",
    "architecture": "smallcnn",
    "classes": CLASSES,
    "cut_points": [
        {"index": i, "name": f"features.{4 * i + 2}", "module": "ReLU", "channels": 16, "height": 8, "width": 8}
        for i in range(4)
    ],
    "curves": {"cut": [0.4, 0.55, 0.6], "adjacent": [0.5, 0.7, 0.75]},
    "knee": {"curve_mode": "cut", "index": 1, "found": True, "S": 1.0, "curve": "concave", "direction": "increasing"},
    "knee_found": True,
    "cut_point": {"index": 1, "name": "features.6", "curve_value": 0.55},
}
TRUNCATE = {
    "stage": "truncate",
    "cut_point": {"index": 1, "name": "features.6"},
    "chosen_by": "knee",
    "base_params": 60883,
    "slim_params": 23891,
    "params_kept": 23891 / 60883,
    "cut_points_total": 4,
}
COMPARE = {
    "stage": "compare",
    "base": {
        "accuracy": 0.8,
        "macro_f1": 0.7,
        "params": 60883,
        "macs": 3391680,
        "checkpoint_bytes": 247676,
        "latency": {"cpu_b1": {"median_ms": 0.4, "p10_ms": 0.3, "p90_ms": 0.5}},
    },
    "slim": {
        "accuracy": 0.75,
        "macro_f1": 0.65,
        "params": 23891,
        "macs": 2801856,
        "checkpoint_bytes": 98796,
        "cut_point": {"index": 1, "name": "features.6"},
        "latency": {"cpu_b1": {"median_ms": 0.2, "p10_ms": 0.1, "p90_ms": 0.3}},
    },
    "comparison": {
        "latency": {"cpu_b1": {"batch_size": 1, "base_ms": 0.4, "slim_ms": 0.2, "speedup": 2.0}},
        "latency_statistic": "median milliseconds per forward pass",
    },
}
EXPLAIN = {
    "stage": "explain",
    "methods": ["gradcam", "guided_backprop"],
    "target": "predicted",
    "classes": CLASSES,
    "split": "test",
    "images": [{"index": 3, "true_label": 0, "true_class": CLASSES[0]}],
    "agreement": 1.0,
    "models": {
        key: {
            "label": label,
            "layer": layer,
            "accuracy_on_these_images": 1.0,
            "predictions": [{"class": 0, "class_name": CLASSES[0], "probability": 0.9, "correct": True}],
        }
        for key, label, layer in (("base", "smallcnn", "features.14"), ("slim", "smallcnn cut", "features.6"))
    },
    "figures": {"cams_base": "cams_base.png", "cams_slim": "cams_slim.png", "base_vs_slim": "base_vs_slim.png"},
}
OUTPUTS = {
    "train": (
        model_summary("train", 0.8, 60883),
        "metrics.json",
        ["training_curves.png", "confusion_matrix.png", "roc_curves.png", "class_counts.png"],
    ),
    "analyze": (ANALYSIS, "analysis.json", ["gbp_grid.png", "ssim_curve.png", "similarity_matrix.png"]),
    "truncate": (TRUNCATE, "truncate.json", []),
    "retrain": (
        model_summary("retrain", 0.75, 23891, {"index": 1, "name": "features.6"}),
        "metrics.json",
        ["training_curves.png", "confusion_matrix.png"],
    ),
    "compare": (COMPARE, "compare.json", ["compare.png"]),
    "explain": (EXPLAIN, "explain.json", ["cams_base.png", "cams_slim.png", "base_vs_slim.png"]),
}
KINDS = ["train", "analyze", "truncate", "retrain", "compare"]


def add_job(
    env,
    kind: str,
    status: str,
    tenant: str | None = None,
    pipeline_id: uuid.UUID | None = None,
    step: int | None = None,
    depends_on: uuid.UUID | None = None,
    write_files: bool = True,
    **fields,
) -> uuid.UUID:
    """A job row as a worker leaves it, with its files in <artifact_root>/<tenant>/<job id>/ when it succeeded."""
    tenant = tenant or env.tenant
    job_id = uuid.uuid4()
    summary, key_file, pictures = OUTPUTS[kind]
    done = status == "succeeded"
    if done and write_files:
        folder = env.settings.resolved_artifact_root / tenant / str(job_id)
        folder.mkdir(parents=True)
        (folder / key_file).write_text(json.dumps(summary))
        for i, name in enumerate(pictures):
            (folder / name).write_bytes(png(40 + i, 20 + i))
    with env.session() as s:
        s.add(
            Job(
                id=job_id,
                tenant=tenant,
                kind=kind,
                status=status,
                params={},
                pipeline_id=pipeline_id,
                step=step,
                depends_on=depends_on,
                progress=1.0 if done else fields.pop("progress", 0.0),
                result={**summary, "model_id": str(uuid.uuid4())} if done else None,
                **fields,
            )
        )
        s.commit()
    return job_id


def add_pipeline(env, statuses: list[str], tenant: str | None = None, **kwargs) -> tuple[uuid.UUID, list[uuid.UUID]]:
    tenant = tenant or env.tenant
    pipeline_id = uuid.uuid4()
    with env.session() as s:
        s.add(Pipeline(id=pipeline_id, tenant=tenant, status="running", params={"arch": "smallcnn"}))
        s.commit()
    ids: list[uuid.UUID] = []
    for step, (kind, status) in enumerate(zip(KINDS, statuses)):
        ids.append(
            add_job(env, kind, status, tenant, pipeline_id, step, ids[-1] if ids else None, **kwargs.get(kind, {}))
        )
    return pipeline_id, ids


def section(page: str, ident: str) -> str:
    match = re.search(rf'<section id="{ident}">(.*?)</section>', page, re.S)
    assert match, f"no section {ident}"
    return match.group(1)


def images(page: str) -> list[bytes]:
    sources = re.findall(r'<img src="([^"]*)"', page)
    assert len(sources) == page.count("<img ")
    out = []
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        out.append(base64.b64decode(src.split(",", 1)[1], validate=True))
    return out


def assert_self_contained(page: str, shows_classes: bool = True) -> None:
    assert page.startswith("<!DOCTYPE html>")
    assert "http://" not in page and "https://" not in page and 'src="/' not in page and "<script" not in page
    assert EVIL not in page and "cats&dogs" not in page
    if shows_classes:
        assert "&lt;img src=x onerror=alert(1)&gt;" in page and "cats&amp;dogs" in page


def test_finished_pipeline_report(env):
    pipeline_id, ids = add_pipeline(env, ["succeeded"] * 5)
    response = env.client.get(f"/v1/pipelines/{pipeline_id}/report", headers=env.headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert_self_contained(page)
    assert re.findall(r'<section id="([a-z]+)"', page) == [
        "overview",
        "data",
        "base",
        "gbp",
        "ssim",
        "cut",
        "slim",
        "compare",
    ]
    assert all(png_bytes.startswith(b"\x89PNG") for png_bytes in images(page))
    assert len(images(page)) == sum(len(OUTPUTS[k][2]) for k in KINDS)
    assert 'data-file="class_counts.png"' in section(page, "data")
    assert "80.0%" in section(page, "base") and "features.6" in section(page, "cut")
    compare = section(page, "compare")
    assert "Test accuracy" in compare and "2.00× faster" in compare and "-5.0 pts" in compare
    assert "Not run yet" not in page
    for job_id in ids:
        assert str(job_id) in section(page, "overview")


def test_running_pipeline_shows_done_steps_and_says_which_are_running_or_queued(env):
    pipeline_id, ids = add_pipeline(
        env,
        ["succeeded", "succeeded", "running", "queued", "queued"],
        truncate={"progress": 0.5, "stage": "truncate", "message": "cutting <the> model"},
    )
    page = env.client.get(f"/v1/pipelines/{pipeline_id}/report", headers=env.headers).text
    assert_self_contained(page)
    assert 'data-file="training_curves.png"' in section(page, "base")
    assert 'data-file="gbp_grid.png"' in section(page, "gbp")
    cut = section(page, "cut")
    assert "Not run yet: the truncate step is running (50% · truncate · cutting &lt;the&gt; model)." in cut
    assert "badge-running" in cut
    for ident in ("slim", "compare"):
        body = section(page, ident)
        assert "Not run yet: the" in body and "is queued" in body and "badge-queued" in body and "<img" not in body
    overview = section(page, "overview")
    assert "badge-running" in overview and overview.count("badge-queued") == 2
    assert re.search(r'<h1>Pipeline [0-9a-f-]+ <span class="badge badge-running">running</span></h1>', page)


def test_failed_step_shows_its_error(env):
    pipeline_id, _ = add_pipeline(
        env,
        ["succeeded", "failed", "cancelled", "cancelled", "cancelled"],
        analyze={"error_code": "internal_error", "error_message": "boom <&>"},
    )
    page = env.client.get(f"/v1/pipelines/{pipeline_id}/report", headers=env.headers).text
    assert "The analyze step failed — internal_error: boom &lt;&amp;&gt;" in section(page, "gbp")
    assert "was cancelled" in section(page, "compare")


def test_job_report(env):
    job_id = add_job(env, "train", "succeeded")
    response = env.client.get(f"/v1/jobs/{job_id}/report", headers=env.headers)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    assert_self_contained(page)
    assert re.findall(r'<section id="([a-z]+)"', page) == ["overview", "data", "base"]
    assert len(images(page)) == 4
    queued = add_job(env, "compare", "queued")
    page = env.client.get(f"/v1/jobs/{queued}/report", headers=env.headers).text
    assert "Not run yet: the compare step is queued" in section(page, "compare")


def test_explain_job_report_pairs_base_and_slim(env):
    job_id = add_job(env, "explain", "succeeded")
    page = env.client.get(f"/v1/jobs/{job_id}/report", headers=env.headers).text
    assert_self_contained(page, shows_classes=False)
    body = section(page, "explain")
    assert "Base vs slim, side by side" in body and 'data-file="base_vs_slim.png"' in body
    pairs = re.search(r'<div class="figs pairs">(.*?)</div>', body, re.S).group(1)
    assert 'data-file="cams_base.png"' in pairs and 'data-file="cams_slim.png"' in pairs
    assert "&lt;img src=x onerror=alert(1)&gt; (90%)" in body and len(images(page)) == 3


def test_succeeded_job_without_files_uses_its_stored_result(env):
    job_id = add_job(env, "truncate", "succeeded", write_files=False)
    page = env.client.get(f"/v1/jobs/{job_id}/report", headers=env.headers).text
    cut = section(page, "cut")
    assert "features.6" in cut and "39.2% kept" in cut


def test_pictures_outside_the_job_folder_are_not_embedded(env):
    victim = add_job(env, "train", "succeeded", tenant=env.other_tenant)
    job_id = add_job(env, "train", "succeeded")
    folder = env.settings.resolved_artifact_root / env.tenant / str(job_id)
    secret = env.settings.resolved_artifact_root / env.other_tenant / str(victim) / "roc_curves.png"
    secret.write_bytes(png(99, 33, (1, 2, 3)))
    (folder / "stolen.png").symlink_to(secret)
    page = env.client.get(f"/v1/jobs/{job_id}/report", headers=env.headers).text
    assert "stolen.png" not in page and png(99, 33, (1, 2, 3)) not in images(page)


def test_isolation_unknown_ids_and_auth(env):
    pipeline_id, ids = add_pipeline(env, ["succeeded"] * 5)
    job_url, pipeline_url = f"/v1/jobs/{ids[0]}/report", f"/v1/pipelines/{pipeline_id}/report"
    for url, what, ident in ((job_url, "job", ids[0]), (pipeline_url, "pipeline", pipeline_id)):
        other = env.client.get(url, headers=env.other_headers)
        assert other.status_code == 404 and other.json() == {"detail": f"{what} {ident} not found"}
        assert env.client.get(url).status_code == 401
        assert env.client.get(url, headers={"Authorization": "Bearer nope"}).status_code == 401
    unknown = uuid.uuid4()
    response = env.client.get(f"/v1/jobs/{unknown}/report", headers=env.headers)
    assert response.status_code == 404 and response.json() == {"detail": f"job {unknown} not found"}
    assert env.client.get(f"/v1/pipelines/{unknown}/report", headers=env.headers).status_code == 404
    assert env.client.get("/v1/jobs/not-a-uuid/report", headers=env.headers).status_code == 422
    assert env.client.get(f"{job_url}?path=/etc/passwd", headers=env.headers).status_code == 422  # no stray parameters


def test_openapi_documents_html(env):
    paths = env.client.get("/openapi.json").json()["paths"]
    for path in ("/v1/jobs/{job_id}/report", "/v1/pipelines/{pipeline_id}/report"):
        operation = paths[path]["get"]
        assert operation["tags"] == ["reports"]
        assert "text/html" in operation["responses"]["200"]["content"]
        assert operation["responses"]["200"]["description"]
        for code in ("401", "404"):
            assert operation["responses"][code]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorOut")


def test_damaged_result_file_is_named_and_the_rest_renders(env):
    """A step whose JSON file is damaged on the artifact volume: its sections name the file and why, and draw what
    the job's stored result gives; every other step renders as usual."""
    pipeline_id, ids = add_pipeline(env, ["succeeded"] * 5)
    folder = env.settings.resolved_artifact_root / env.tenant / str(ids[1])
    (folder / "analysis.json").write_text('{"stage": "analyze", "knee": ')
    page = env.client.get(f"/v1/pipelines/{pipeline_id}/report", headers=env.headers).text
    assert_self_contained(page)
    for ident in ("gbp", "ssim"):
        body = section(page, ident)
        assert f"analysis.json of step 2: job {ids[1]} is not valid JSON" in body  # steps counted from 1, as in /ui
        assert f"The stored result of step 2: job {ids[1]} does not match the analyze result" in body
        assert "Not run yet" not in body and "badge-succeeded" in body
    assert 'data-file="gbp_grid.png"' in section(page, "gbp") and "features.10" in section(page, "gbp")
    assert "80.0%" in section(page, "base") and "features.6" in section(page, "cut")
    assert "2.00× faster" in section(page, "compare") and "is not valid JSON" not in section(page, "compare")
