"""The one settings class, read from LAYERCUT_* environment variables (pydantic-settings).

With no database or broker configured, layercut runs embedded: SQLite in the user's data directory
(``LAYERCUT_DATA_DIR``, else the platform's per-user folder, e.g. ~/.local/share/layercut — never the current
directory, so that ``layercut serve`` and ``layercut keys`` agree wherever they are run) and jobs executed
in-process. Point LAYERCUT_DATABASE_URL at Postgres and LAYERCUT_BROKER_URL at Redis
for the service.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_data_dir() -> Path:
    """The per-user data folder of layercut (platformdirs: ~/.local/share/layercut on Linux, ~/Library/Application
    Support/layercut on macOS, %LOCALAPPDATA%\\layercut on Windows)."""
    from platformdirs import user_data_dir

    return Path(user_data_dir("layercut", appauthor=False))


DEFAULT_CALLBACK_SECRET = "change-me"
WELL_KNOWN_PASSWORDS = {"layercut", "postgres", "password", "change-me", "changeme", "secret"}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LAYERCUT_", env_file=None, extra="ignore")

    data_dir: Path = Field(
        default_factory=lambda: default_data_dir(),
        description="base folder for the embedded database and artifacts; default: the per-user data folder "
        "(~/.local/share/layercut on Linux)",
    )
    database_url: str | None = Field(None, description="SQLAlchemy URL; default: SQLite file in data_dir")
    broker_url: str | None = Field(None, description="Celery broker (redis://…); unset: jobs run in-process")
    artifact_root: Path | None = Field(
        None,
        description="the shared artifact volume, or with artifact_url this machine's cache of the object store; "
        "default: data_dir/artifacts",
    )
    artifact_url: str | None = Field(
        None,
        pattern=r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$",
        description="s3://bucket/prefix: keep artifacts in S3-compatible object storage, so that workers and API "
        "processes on other machines share them (unset: the volume at artifact_root)",
    )
    s3_endpoint_url: str | None = Field(
        None, description="the object store's endpoint, e.g. http://minio:9000 (unset: AWS S3)"
    )
    s3_region: str | None = Field(None, description="the object store's region (unset: boto3's default)")
    s3_access_key_id: str | None = Field(
        None, description="the object store's access key (unset: boto3's own chain: AWS_* variables, a role …)"
    )
    s3_secret_access_key: SecretStr | None = Field(None, description="the secret of s3_access_key_id")
    artifact_presigned_seconds: int = Field(
        0,
        ge=0,
        le=7 * 24 * 3600,
        description="with artifact_url: answer downloads with a redirect (307) to a URL of the object store valid "
        "this long, instead of streaming them through the API (0: stream; the store must be reachable by clients)",
    )
    mlflow_tracking_uri: str | None = Field(
        None,
        description="log every `layercut run` to this MLflow tracking server (as --mlflow does), and the service "
        "pipelines that ask for it; needs layercut[mlflow] (empty: none)",
    )
    artifact_cache_max_bytes: int = Field(
        20 * 2**30,
        ge=0,
        description="with artifact_url: the most bytes this machine keeps in its cache (artifact_root); the least "
        "recently used files that no running job of this machine holds are removed past it (0: no limit)",
    )
    dataset_roots: list[Path] = Field(
        default_factory=list, description="server folders that may be registered as datasets"
    )
    data_root: Path | None = Field(
        None, description="where torchvision datasets (cifar10, mnist, …) are stored; default: data_dir/datasets"
    )
    no_download: bool = Field(False, description="never try to download a torchvision dataset that is not in data_root")
    orphan_after_seconds: float = Field(
        3600.0,
        gt=0,
        description="what an interrupted upload or import left on the artifact volume is removed by the reaper once "
        "this old",
    )
    retention_days: float = Field(
        0,
        ge=0,
        description="finished jobs and pipelines older than this many days are deleted with their files (0: kept)",
    )
    log_format: Literal["json", "text"] = Field(
        "json", description="the service's log lines: one JSON object per line, or plain text"
    )
    log_level: str = Field("INFO", description="the least severe log level written (DEBUG, INFO, WARNING, …)")
    worker_metrics_port: int = Field(
        9101, ge=0, le=65535, description="port of a Celery worker's Prometheus /metrics (0: none)"
    )
    debug: bool = Field(False, description="the command line prints the traceback of an error, not only its message")

    upload_max_bytes: int = Field(2 * 1024**3, description="largest accepted upload (compressed)")
    upload_max_unpacked_bytes: int = Field(
        2 * 1024**3,
        description="largest total size of an upload's members, checked on the sizes the archive declares before "
        "anything is extracted and again on the bytes written",
    )
    upload_max_members: int = Field(200_000, description="most files an uploaded archive may hold")
    upload_max_ratio: float = Field(
        200.0,
        gt=1,
        description="largest unpacked-to-packed size ratio of an archive member (zip) or of the whole archive (zip, "
        "tar); only members and archives that unpack to 1 MiB or more are checked. Beyond it the upload is refused "
        "as a likely zip bomb before anything is extracted",
    )
    upload_max_concurrent_extractions: int = Field(
        2,
        ge=1,
        description="dataset uploads one API process saves and extracts at the same time; one more waits up to "
        "upload_extraction_wait_seconds for a turn, then gets 503 with Retry-After",
    )
    upload_extraction_wait_seconds: float = Field(
        10.0, ge=0, description="how long an upload waits for a free extraction slot before its 503"
    )
    tenant_quota_bytes: int = Field(
        0,
        ge=0,
        description="bytes one tenant may keep under its folder of the artifact volume (uploaded datasets, imported "
        "weights, job artifacts); an upload or import that would pass it is refused with 507 (0: no quota). Running "
        "jobs are not stopped by it",
    )
    json_max_bytes: int = Field(
        1024**2, ge=1, description="largest accepted request body that is not an upload (JSON); larger ones get 413"
    )
    public_url: str | None = Field(
        None,
        description="the API's public base URL (https://layercut.example.com) for the download links it answers "
        "with; unset: links relative to the server (/v1/artifacts/…), never built from the request's Host header",
    )

    task_soft_time_limit: int = Field(6 * 3600, description="seconds before a job ends as failed with code time_limit")
    task_hard_time_limit: int = Field(6 * 3600 + 300, description="seconds before the worker kills the task")
    worker_max_tasks_per_child: int = Field(
        200, ge=1, description="jobs a worker process runs before it is replaced (a backstop against slow leaks)"
    )
    worker_max_memory_per_child_kib: int = Field(
        8 * 1024**2, ge=1, description="resident memory (KiB) after which a worker process is replaced after its job"
    )
    worker_memory_mb: int = Field(
        16 * 1024,
        ge=0,
        description="memory (MiB) a worker has for one job: training or explanations estimated to need more are "
        "refused at submit (422 naming the batch size that fits; 0: not checked)",
    )
    analyze_memory_budget_mb: int = Field(
        8 * 1024,
        ge=256,
        description="peak resident memory (MiB) an analysis job may reach on a worker; a job's own "
        "analyze.memory_budget_mb may only lower it",
    )
    worker_pool_check_seconds: float = Field(
        0.25, gt=0, description="how often a worker looks for retired pool processes to replace (Celery: 5 s)"
    )
    heartbeat_seconds: float = Field(10.0, description="how often a running job proves its worker is alive")
    database_retry_seconds: float = Field(
        30.0,
        ge=0,
        description="how long a running job retries writing its progress and its final status through a database "
        "outage before giving up (its work is kept meanwhile)",
    )
    tenant_max_active_jobs: int = Field(
        200,
        ge=0,
        description="most unfinished (queued or running) jobs one tenant may have; a submit beyond it is a 429 with "
        "Retry-After (0: no limit). A pipeline counts its steps; a sweep's fan-out is not refused",
    )
    tenant_fair_scheduling: bool = Field(
        True,
        description="while jobs of several tenants wait for a worker, the tenant running the fewest jobs goes first "
        "(among equals, the one whose last job started longest ago); a job that must yield waits queued and is sent "
        "again as jobs end (false: first come, first served)",
    )
    auth_failures_per_minute: int = Field(
        30,
        ge=0,
        description="failed authentications one client address may make per minute before its requests are "
        "answered 429 until the minute has passed (each API process counts its own; 0: no limit)",
    )
    cancel_grace_seconds: float = Field(
        30.0,
        gt=0,
        description="a job still running this long after its cancel was noticed is ended cancelled and its worker "
        "process stopped (Celery pool processes only; the pool replaces it)",
    )
    stale_after_seconds: float = Field(
        60.0, description="a running job without a heartbeat this long is re-queued or failed"
    )
    max_attempts: int = Field(3, description="runs of one job before a lost worker fails it")
    progress_interval_seconds: float = Field(1.0, description="at most one progress write per job this often")

    read_cache: bool = Field(
        True, description="API processes cache job states and key lookups, dropped on Postgres NOTIFY"
    )
    read_cache_entries: int = Field(10_000, ge=1, description="most entries one API process caches")
    read_cache_seconds: float = Field(30.0, gt=0, description="longest an entry is served, even without a notification")

    callback_secret: str = Field(DEFAULT_CALLBACK_SECRET, description="HMAC key that signs job callbacks")
    allow_insecure_defaults: bool = Field(
        False,
        description="development only: let the service (a database or broker configured) run with the default "
        "callback secret or a well-known database password",
    )
    callback_allowed_hosts: str = Field(
        "",
        description="comma-separated host names, IP addresses or CIDR networks that callbacks may reach although "
        "they are not public (loopback, private, link-local …), e.g. 10.20.0.0/16,hooks.internal",
    )
    callback_attempts: int = 5
    callback_timeout_seconds: float = 10.0

    @field_validator("mlflow_tracking_uri", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        """An empty value (compose passes ``${LAYERCUT_MLFLOW_TRACKING_URI:-}``) means no tracking server."""
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir.expanduser() / 'layercut.db').resolve()}"

    @property
    def resolved_artifact_root(self) -> Path:
        return (self.artifact_root or self.data_dir / "artifacts").expanduser().resolve()

    @property
    def resolved_data_root(self) -> Path:
        """The folder of torchvision datasets: ``data_root``, or ``datasets`` under ``data_dir``."""
        return (self.data_root or self.data_dir / "datasets").expanduser()

    def insecure_defaults(self) -> list[str]:
        """What makes this service configuration unsafe to expose: the default callback secret, a well-known
        database password. Empty for the embedded default (no database or broker configured) and when
        ``allow_insecure_defaults`` is set."""
        if self.allow_insecure_defaults or not (self.database_url or self.broker_url):
            return []
        problems = []
        if self.callback_secret == DEFAULT_CALLBACK_SECRET:
            problems.append("LAYERCUT_CALLBACK_SECRET is the default 'change-me': set a long random secret")
        password = _database_password(self.database_url)
        if password is not None and password.lower() in WELL_KNOWN_PASSWORDS:
            problems.append("the database password in LAYERCUT_DATABASE_URL is a well-known default: set your own")
        return problems

    def refuse_insecure_defaults(self, who: str) -> None:
        """Stop ``who`` (the API, a worker) from starting on insecure defaults, saying what to set."""
        problems = self.insecure_defaults()
        if problems:
            raise InsecureDefaults(
                f"{who} refuses to start: " + "; ".join(problems) + " (or, for development only, "
                "LAYERCUT_ALLOW_INSECURE_DEFAULTS=1)"
            )

    @property
    def embedded(self) -> bool:
        """Jobs run in-process (no broker configured)."""
        return not self.broker_url


class InsecureDefaults(RuntimeError):
    """The service was asked to start with a default secret or password."""


def _database_password(url: str | None) -> str | None:
    if not url:
        return None
    from urllib.parse import urlsplit

    try:
        return urlsplit(url).password
    except ValueError:
        return None


@lru_cache
def get_settings() -> Settings:
    return Settings()
