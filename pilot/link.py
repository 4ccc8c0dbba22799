"""What the pilot needs of the harvester, whichever way it is reached.

A pilot reaches its harvester over HTTP (:class:`pilot.server.PilotServer`) or,
on compute nodes without a network, through files on a shared filesystem
(:class:`pilot.messenger.SharedFsLink`). Both offer the calls below with the
same bodies and answers, and raise :class:`ServerError` the same way, so the
job loop, the heartbeat and stage-in and stage-out do not know which one runs.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Protocol

from pilot.specs import UnreadableJob
from protocol.pilot import JobSpec


class ServerError(Exception):
    """The harvester answered with an error, or could not be reached in time.

    ``status_code`` is the HTTP status of a refusal (a 4xx is final); ``None`` when
    the harvester was not reached or failed (the pilot may ask again later)."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class HarvesterLink(Protocol):
    """The pilot's calls to the harvester."""

    @property
    def where(self) -> str:
        """The harvester as the pilot's log names it (a URL, a folder)."""
        ...

    def acquire_jobs(
        self, body: dict[str, Any], *, retry_for_s: float = 120.0
    ) -> list[JobSpec | UnreadableJob]: ...

    def heartbeat(self, body: dict[str, Any]) -> dict[str, str]: ...

    def update_job(self, body: dict[str, Any], *, retry_for_s: float = 600.0) -> dict[str, Any]: ...

    def worker_node(self, body: dict[str, Any]) -> None: ...

    def upload(self, path: Path, name: str, *, retry_for_s: float = 300.0) -> dict[str, Any]: ...

    def download(self, sha256: str, target: Path, *, retry_for_s: float = 300.0) -> None: ...

    def close(self) -> None: ...


def sha256_of(path: Path) -> str:
    """The checksum every transfer is verified by, on both links."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
