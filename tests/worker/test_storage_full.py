"""A job whose stage finds the artifact volume full ends ``failed`` with code ``storage_full`` and a message saying
what to do, and its folder is emptied of what it half wrote (issue 11, item 9)."""

from __future__ import annotations

import errno

import pytest

from layercut.jobs import stage
from layercut.jobs.runner import execute_job
from layercut.settings import Settings
from layercut.testing.workers import add_dataset, add_job, job_row, train_params

TENANT = "t-storage-full"


def disk_full() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


def raise_directly():
    raise disk_full()


def raise_wrapped():  # what a library does with it (torch.save: "RuntimeError: ... file write failed")
    try:
        raise disk_full()
    except OSError as exc:
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 1216 vs 1104") from exc


def raise_quota():
    raise OSError(errno.EDQUOT, "Disk quota exceeded")


@pytest.mark.parametrize("how", [raise_directly, raise_wrapped, raise_quota], ids=["enospc", "wrapped", "edquot"])
def test_a_job_that_fills_the_disk_ends_storage_full_with_its_folder_emptied(postgres_url, tmp_path, monkeypatch, how):
    settings = Settings(
        database_url=postgres_url,
        broker_url="redis://127.0.0.1:6379/7",
        artifact_root=tmp_path,
        progress_interval_seconds=0.0,
        heartbeat_seconds=0.2,
    )
    wrote = []

    def filling_stage(params, run):
        run.reporter.update("train", 0.3, "writing the curves")
        (run.out / "curves.png").write_bytes(b"\x89PNG half a picture")  # the stray PNG of the finding
        (run.out / "checkpoints").mkdir()
        (run.out / "checkpoints" / "epoch-1.safetensors").write_bytes(b"\x00" * 1000)
        wrote.append(run.out)
        how()

    monkeypatch.setitem(stage.STAGE_RUNNERS, "train", filling_stage)
    job_id = add_job(postgres_url, TENANT, train_params(add_dataset(postgres_url, TENANT)))
    assert execute_job(job_id, settings, "full-disk") == "failed"
    job = job_row(postgres_url, job_id)
    assert job.error_code == "storage_full", (job.error_code, job.error_message)
    assert "artifact volume is full" in job.error_message and "free space" in job.error_message.lower()
    assert str(tmp_path) not in job.error_message  # no server folder in what the caller reads
    out = tmp_path / TENANT / str(job_id)
    assert wrote == [out]
    assert not out.exists() or list(out.iterdir()) == [], sorted(p.name for p in out.rglob("*"))


def test_other_crashes_stay_internal_errors(postgres_url, tmp_path, monkeypatch):
    settings = Settings(database_url=postgres_url, artifact_root=tmp_path, heartbeat_seconds=0.2)

    def crashing_stage(params, run):
        (run.out / "kept.txt").write_text("a crash that is not a full disk keeps its files for debugging")
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setitem(stage.STAGE_RUNNERS, "train", crashing_stage)
    job_id = add_job(postgres_url, TENANT, train_params(add_dataset(postgres_url, TENANT)))
    assert execute_job(job_id, settings, "io-error") == "failed"
    assert job_row(postgres_url, job_id).error_code == "internal_error"
    assert (tmp_path / TENANT / str(job_id) / "kept.txt").is_file()
