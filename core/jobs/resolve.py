"""Resolving a job's inputs: the ids in its params (datasets, model references, analysis jobs) become rows and
local files (fetched from the artifact store when it is elsewhere, checked against the size and SHA-256 recorded
for them), each checked to belong to the job's tenant and, for an earlier job's output, to have been made by a
job that succeeded."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from layercut.artifacts import ArtifactStore
from layercut.contracts.configs import DataConfig
from layercut.contracts.errors import LayercutError, MissingResourceError
from layercut.contracts.files import ANALYSIS_JSON
from layercut.contracts.jobs import ModelRef, SelectParams, SweepPlanParams, TruncateParams
from layercut.contracts.spec import ModelSpec
from layercut.store.models import Artifact, Dataset, Job, ModelVersion


class DependencyFailed(LayercutError):
    """A job this one needs (the producer of its input model or analysis) did not succeed."""

    code = "dependency_failed"


@dataclass
class Resolver:
    """Turns a job's ids (datasets, model refs, analysis jobs) into rows and local files, checked against its
    tenant."""

    session: Session
    job: Job
    store: ArtifactStore

    @property
    def root(self) -> Path:
        return self.store.root

    def file(self, key: str) -> Path:
        """A stored file on this machine, checked against its Artifact row when it has one (a job's output)."""
        row = self.session.scalars(
            select(Artifact).where(Artifact.path == key, Artifact.tenant == self.job.tenant)
        ).first()
        if row is None:
            return self.store.local(key)
        return self.store.local(key, size=row.bytes, sha256=row.sha256)

    def job_files(self, job: Job, under: str = "", suffixes: tuple[str, ...] = ()) -> dict[str, Path]:
        """The files a succeeded job of the tenant made (its Artifact rows), on this machine: path relative to
        ``under`` (a folder of the job's, e.g. a candidate's) → local file; only names ending in ``suffixes``
        when given."""
        prefix = f"{job.tenant}/{job.id}/{under.strip('/') + '/' if under.strip('/') else ''}"
        rows = self.session.scalars(
            select(Artifact)
            .where(Artifact.job_id == job.id, Artifact.tenant == self.job.tenant)
            .order_by(Artifact.path)
        ).all()
        return {
            row.path[len(prefix) :]: self.store.local(row.path, size=row.bytes, sha256=row.sha256)
            for row in rows
            if row.path.startswith(prefix) and (not suffixes or row.path.lower().endswith(suffixes))
        }

    def dataset(self, dataset_id: uuid.UUID) -> Dataset:
        """The dataset row, if the job's tenant owns it."""
        dataset = self.session.get(Dataset, dataset_id)
        if dataset is None or dataset.tenant != self.job.tenant:
            raise MissingResourceError(f"dataset {dataset_id} does not exist")
        return dataset

    def source(self, dataset: Dataset) -> str:
        """The DataConfig source of a dataset row: builtin name, absolute folder, or upload under the artifact root."""
        if dataset.kind == "builtin":
            return dataset.location
        if dataset.kind == "upload":
            return str(self.store.local_tree(dataset.location))
        return str(Path(dataset.location).resolve())

    def producing_job(self, job_id: uuid.UUID, what: str) -> Job:
        """The job whose output this one reads; it must be the tenant's and must have succeeded."""
        producer = self.session.get(Job, job_id)
        if producer is None or producer.tenant != self.job.tenant:
            raise MissingResourceError(f"job {job_id} (the {what}) does not exist")
        if producer.status != "succeeded":
            raise DependencyFailed(
                f"job {job_id} (the {what}) ended {producer.status}"
                + (f": {producer.error_code}: {producer.error_message}" if producer.error_code else "")
            )
        return producer

    def model(self, ref: ModelRef) -> ModelVersion:
        """The model version a reference names: by id, or the newest one its producing job made."""
        if ref.model_id is not None:
            model = self.session.get(ModelVersion, ref.model_id)
            if model is None or model.tenant != self.job.tenant:
                raise MissingResourceError(f"model {ref.model_id} does not exist")
            return model
        assert ref.from_job is not None  # ModelRef holds exactly one of the two
        producer = self.producing_job(ref.from_job, "job producing the model")
        model = self.session.scalars(
            select(ModelVersion).where(ModelVersion.job_id == producer.id).order_by(ModelVersion.created_at.desc())
        ).first()
        if model is None:
            raise DependencyFailed(f"job {producer.id} ({producer.kind}) produced no model")
        return model

    def checkpoint(self, model: ModelVersion) -> Path:
        """The model's checkpoint file, which must be in the artifact store."""
        try:
            return self.file(model.checkpoint)
        except MissingResourceError:
            raise MissingResourceError(
                f"the checkpoint of model {model.id} is missing from the artifact store"
            ) from None

    def data_config(self, dataset_id: uuid.UUID | None, model: ModelVersion, spec: ModelSpec) -> DataConfig:
        """How to read data for an existing model (``spec``, read from its checkpoint): its training split
        settings, on ``dataset_id`` (default: the dataset it was trained on)."""
        dataset_id = dataset_id or model.dataset_id
        if dataset_id is None:
            raise LayercutError(f"model {model.id} has no recorded dataset; give dataset_id")
        base = dict(spec.data or {})
        base.update(source=self.source(self.dataset(dataset_id)))
        base.setdefault("image_size", spec.image_size)
        if base.get("classes") is None and dataset_id != model.dataset_id:
            base["classes"] = list(spec.classes)
        return DataConfig.model_validate({k: v for k, v in base.items() if k in DataConfig.model_fields})

    def analysis_path(self, params: TruncateParams | SelectParams | SweepPlanParams) -> Path | None:
        """analysis.json of ``analysis_job``, or of the analyze step of this job's pipeline: what a cut at the knee
        and the auto cut read (a sweep reads it when it has one, to mark the knee and the probes)."""
        if isinstance(params, TruncateParams) and params.truncate.cut != "knee":
            return None
        analysis_job = params.analysis_job
        if analysis_job is None and self.job.pipeline_id is not None:
            analysis_job = self.session.scalars(
                select(Job.id).where(Job.pipeline_id == self.job.pipeline_id, Job.kind == "analyze").order_by(Job.step)
            ).first()
        if analysis_job is None:
            if isinstance(params, SweepPlanParams):
                return None
            raise LayercutError(f"{params.kind} needs analysis_job (an analyze job of this model)")
        producer = self.producing_job(analysis_job, "analysis")
        try:
            return self.file(f"{producer.tenant}/{producer.id}/{ANALYSIS_JSON}")
        except MissingResourceError:
            raise MissingResourceError(f"job {producer.id} has no {ANALYSIS_JSON}") from None
