"""Typed settings of the harvester service.

Read once, explicitly, by the command that starts the service (never at
import time). Precedence: ``HPCAF_*`` environment variables, then the
``[harvester]`` table of the settings file, then the defaults below.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from harvester.errors import ConfigError

SETTINGS_FILE_NAME = "harvester.toml"


def default_home() -> Path:
    """``$HPCAF_HOME`` or ``~/.hpcaf``."""
    return Path(os.environ.get("HPCAF_HOME") or Path.home() / ".hpcaf")


class HarvesterSettings(BaseSettings):
    """Everything the service needs to know that is not a queue."""

    model_config = SettingsConfigDict(env_prefix="HPCAF_", extra="forbid")

    home: Path = Field(default_factory=default_home)
    database_url: str | None = None
    """SQLAlchemy URL; default a SQLite file in ``home``."""
    image_cache: Path | None = None
    """Unpacked images; default ``home/images``."""
    insecure_registries: list[str] = Field(default_factory=list)
    """Image registries (``host:port``) spoken to without TLS verification, besides
    loopback ones (which always are, as docker treats them)."""
    allowed_registries: list[str] = Field(default_factory=list)
    """Registries (``host[:port]``) tasks may pull ``docker://`` images from; empty: any.
    A site that keeps images on its own registry names it here, and the harvester
    contacts no other on a user's behalf."""
    image_pull_timeout_s: float = Field(1800.0, gt=0)
    """The longest one image pull may take before it is abandoned and tried again."""
    pallets: Path | None = None
    """Where local pyhf pallets live (tests and benchmarks)."""
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str | None = None
    """URL pilots use to reach this service; default ``http://host:port``. Instances
    sharing a database list all their URLs, comma-separated: pilots fail over."""
    files_dir: Path | None = None
    """The file store; default ``home/files``. Instances sharing a database share it."""

    agent_interval_s: float = Field(2.0, gt=0)
    messenger_scan_s: float = Field(0.1, gt=0)
    """How often the relay looks for the calls of shared-filesystem pilots (a listing of
    each pilot's request folder: cheap on a local disk, a metadata load on Lustre)."""
    heartbeat_interval_s: float = Field(30.0, gt=0)
    """How often pilots heartbeat (sent to them at acquire time)."""
    heartbeat_timeout_s: float = Field(600.0, gt=0)
    """A held job without a heartbeat for this long is failed "lost heartbeat"."""
    worker_queue_timeout_s: float = Field(48 * 3600.0, gt=0)
    """A worker queued in the batch system longer than this is cancelled."""
    sweep_after_s: float = Field(24 * 3600.0, ge=0)
    """Batch leftovers (scripts, logs) of ended workers are removed after this."""
    submit_retry_backoff_s: float = Field(30.0, ge=0)
    """After a failed worker submission, wait this long before the next try on that queue."""
    max_upload_bytes: int = Field(1 << 30, gt=0)
    max_request_bytes: int = Field(32 << 20, gt=0)
    """Any other request body (task parameters, bulk reports, forms) over this is refused."""
    max_jobs_per_task: int = Field(10_000, gt=0)
    pilot_max_idle_s: float = Field(10.0, ge=0)
    """Pilots started by the harvester exit after this long without a job."""
    lease_s: float = Field(30.0, gt=0)
    """Agents' leases (per queue, and one for the agents acting on all tasks): when an
    instance dies, another takes its duties over within this long."""
    token_cache_s: float = Field(5.0, ge=0)
    """An API process trusts a token it has checked for this long: a revocation takes
    effect within it. 0: check the database on every request."""
    idle_poll_cache_s: float = Field(1.0, ge=0)
    """After a poll found nothing for a queue, polls for the same resources are answered
    "nothing" for this long without the database. 0: always look."""

    @property
    def settings_file(self) -> Path:
        return self.home / SETTINGS_FILE_NAME

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'harvester.db'}"

    @property
    def resolved_image_cache(self) -> Path:
        return self.image_cache or self.home / "images"

    @property
    def file_store(self) -> Path:
        return self.files_dir or self.home / "files"

    @property
    def workers_dir(self) -> Path:
        return self.home / "workers"

    @property
    def resolved_public_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"


def read_settings_file(path: Path) -> dict[str, Any]:
    """Parse a settings file; a syntax error names the file and the line."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def load_settings(config_file: Path | None = None) -> tuple[HarvesterSettings, dict[str, Any]]:
    """Build the settings from the environment and the settings file.

    Returns the settings and the whole parsed file (queues are read from it by
    :func:`harvester.config.load_queues`).
    """
    home = default_home()
    path = config_file or home / SETTINGS_FILE_NAME
    document = read_settings_file(path) if path.exists() else {}
    file_values = dict(document.get("harvester", {}))
    for key in list(file_values):
        if f"HPCAF_{key.upper()}" in os.environ:
            del file_values[key]  # the environment wins over the file
    try:
        settings = HarvesterSettings(**file_values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{path} [harvester]: {problems}") from exc
    return settings, document
