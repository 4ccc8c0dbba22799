"""The two ways to run a job's payload: a container of its own, or a warm worker.

Each starts the payload and says how to wait for it and how to stop it; when
to stop it, and what its end means, is the supervisor's
(``pilot/supervision.py``), the same for both. Both write the same header to
the job's log, so a log says which pilot ran which attempt with which runtime.
"""

from __future__ import annotations

import logging
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

from pilot.outcome import LOG_NAME
from pilot.payload import has_cache_mount, owner_cache, transform_argv
from pilot.processes import terminate
from pilot.runtimes.base import CACHE_IN_CONTAINER, ContainerRequest, ContainerRuntime
from pilot.warm import WARM_TRANSFORMS, WarmPool, WarmWorker
from protocol.error_codes import PilotErrorCode
from protocol.pilot import JobSpec

log = logging.getLogger(__name__)


class PayloadNotStarted(Exception):
    """The payload could not be started; the job fails with ``code``."""

    def __init__(self, code: PilotErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def start_logged(
    job_id: int, command: list[str], workdir: Path, header: str, what: str
) -> subprocess.Popen[bytes]:
    """``command`` in a session of its own, its output after ``header`` in the job's log;
    ``what`` names it in the error when it cannot start."""
    log.info("job %s: %s", job_id, " ".join(command))
    with (workdir / LOG_NAME).open("wb") as log_file:
        log_file.write(header.encode())
        log_file.flush()
        try:
            return subprocess.Popen(
                command,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            raise PayloadNotStarted(
                PilotErrorCode.CONTAINER_FAILED, f"cannot start {what}: {exc}"
            ) from exc


def warm_eligible(pool: WarmPool | None, spec: JobSpec) -> bool:
    """Whether the job goes to a warm worker: the pilot keeps them, the transform
    serves, and the image has the scratch area warm workers share with the pilot."""
    return bool(
        pool
        and spec.nodes == 1
        and spec.image_path
        and spec.transform in WARM_TRANSFORMS
        and has_cache_mount(Path(spec.image_path))
    )


class ContainerPayload:
    """The payload in a container started for this job alone."""

    died = "the container gave no exit code"  # not reached: a reaped process has one

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process

    @classmethod
    def start(
        cls, job_id: int, request: ContainerRequest, runtime: ContainerRuntime, header: str
    ) -> ContainerPayload:
        command = runtime.command(request)
        return cls(start_logged(job_id, command, request.workdir, header, runtime.name))

    def wait(self, timeout_s: float) -> int | None:
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> int | None:
        terminate(self.process)
        return self.process.wait()


class WarmPayload:
    """The job handed to the warm worker of its (image, transform, ...), started if none is.

    The worker sees the pilot's scratch area; the job's work dir lies in it and
    the job's own environment travels with the job, not in the worker's. A
    worker that gave no answer is discarded; the next job starts a new one.
    """

    died = "the warm worker died (see warm.log of the pilot)"

    def __init__(
        self, pool: WarmPool, key: tuple[Any, ...], worker: WarmWorker, job: dict[str, Any]
    ) -> None:
        self.pool, self.key, self.worker, self.job = pool, key, worker, job
        self.stopped = False
        self.answered = False
        self.sent = worker.send(job)

    @classmethod
    def start(
        cls,
        pool: WarmPool,
        spec: JobSpec,
        request: ContainerRequest,
        runtime: ContainerRuntime,
        header: str,
        base_dir: Path,
    ) -> WarmPayload:
        server_request = replace(
            request,
            argv=[*transform_argv(spec)[:2], "--serve"],
            workdir=owner_cache(base_dir, spec.owner) / "jobs",
            env={k: v for k, v in request.env.items() if k not in spec.env},
        )
        key = (
            spec.owner,  # one user's jobs never run in a process that served another's
            request.image,
            spec.transform,
            request.gpu,
            tuple(str(device) for device in request.devices),  # the GPUs this job was given
            request.env.get("OMP_NUM_THREADS"),
            request.allow_network,
            tuple(request.binds),
        )
        (request.workdir / LOG_NAME).write_bytes(header.encode() + b"=== warm worker\n")
        worker = pool.take(key, runtime.command(server_request), base_dir / "warm.log")
        job = {
            "workdir": f"{CACHE_IN_CONTAINER}/jobs/{request.workdir.name}",
            "env": dict(spec.env),
        }
        return cls(pool, key, worker, job)

    @property
    def process(self) -> subprocess.Popen[bytes]:
        return self.worker.proc

    def wait(self, timeout_s: float) -> int | None:
        code = self.worker.reply(timeout_s) if self.sent else None
        self.answered = code is not None
        return code

    def stop(self) -> int | None:
        self.pool.discard(self.worker)
        self.stopped = True
        return None

    def finish(self) -> None:
        """The job ended: the worker goes back to the pool once it answered for this job.
        One that did not (supervision ended early: its ``running`` report was refused)
        may still be at work on it and is stopped, or the next job would read this
        job's answer as its own."""
        if self.stopped:
            return
        if self.answered:
            self.pool.give_back(self.key, self.worker)
        else:
            self.pool.discard(self.worker)


def job_dir(base_dir: Path, pool: WarmPool | None, spec: JobSpec) -> Path:
    """The job's work dir: for a warm worker, in the scratch area those workers see."""
    name = f"job_{spec.job_id}"
    if warm_eligible(pool, spec):
        return owner_cache(base_dir, spec.owner) / "jobs" / name
    return base_dir / name
