"""Running one job: stage-in, container, stage-out, final report.

Every way a job can end produces exactly one final ``update_job``: finished
with its outputs, or failed with a pilot error code and diagnostics. The
payload's output is kept as the job log and uploaded in both cases.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pilot.gpus import Gpu, device_nodes, driver_libraries
from pilot.runtimes.base import CACHE_IN_CONTAINER, Bind, ContainerRequest, ContainerRuntime
from pilot.runtimes.select import RuntimeUnavailable, select_runtime
from pilot.server import PilotServer, ServerError
from pilot.stage import StageError, stage_in, stage_out
from pilot.warm import WARM_TRANSFORMS, WarmPool
from protocol.error_codes import PilotErrorCode

log = logging.getLogger(__name__)

LOG_NAME = "payload.log"
EXIT_BAD_INPUT = 65  # EX_DATAERR: the transform says a new attempt cannot help
EXIT_NO_GPU = 66  # the transform needed a GPU and the container did not show it one
KILL_GRACE_S = 10.0
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "XLA_FLAGS_CPU_THREADS",
)


def transforms_dir() -> Path:
    """The folder of the ``transforms`` package, bound read-only into every container.

    Found with ``find_spec``, not imported: the transforms run inside the images,
    never in the pilot, and the pilot imports none of their code.
    """
    spec = importlib.util.find_spec("transforms")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("No module named 'transforms'", name="transforms")
    return Path(spec.origin).parent


def transform_argv(spec: dict[str, Any]) -> list[str]:
    """The command that runs inside the image for the job's transform."""
    name = spec["transform"]
    script = f"/srv/transforms/{name}.py"
    if name == "runcontainer":
        return ["python3", script, "--exec", spec["exec"]]
    return ["python3", script, "--job", "job.json"]


@dataclass
class Outcome:
    state: str
    exit_code: int | None = None
    error_code: PilotErrorCode | None = None
    diagnostics: str | None = None
    outputs: list[dict[str, Any]] | None = None


class JobRunner:
    """Runs jobs one at a time; can be told to kill the current one."""

    def __init__(
        self,
        server: PilotServer,
        pilot_id: str,
        base_dir: Path,
        cores: int,
        gpus: list[Gpu] | None = None,
        warm: bool = True,
    ) -> None:
        self.gpus = list(gpus or [])
        self.warm: WarmPool | None = WarmPool() if warm else None
        self.server = server
        self.pilot_id = pilot_id
        self.base_dir = base_dir
        self.cores = cores
        self._proc: subprocess.Popen[bytes] | None = None
        self._current: int | None = None
        self._kill_reason: tuple[PilotErrorCode, str] | None = None
        self._lock = threading.Lock()

    # -- control from other threads ------------------------------------------------

    def kill(self, job_id: int | None, code: PilotErrorCode, reason: str) -> None:
        """Stop the payload of ``job_id`` (or whatever runs, when ``None``)."""
        with self._lock:
            if self._current is None or (job_id is not None and job_id != self._current):
                return
            self._kill_reason = (code, reason)
            proc = self._proc
        if proc is not None:
            _terminate(proc)

    # -- one job -------------------------------------------------------------------

    def run(self, spec: dict[str, Any]) -> Outcome:
        job_id = spec["job_id"]
        workdir = self._workdir(spec)
        workdir.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._current, self._kill_reason = job_id, None
        outcome = Outcome(state="failed")
        try:
            outcome = self._run(spec, workdir)
        except StageError as exc:
            outcome = Outcome("failed", error_code=exc.code, diagnostics=str(exc))
        except RuntimeUnavailable as exc:
            outcome = Outcome(
                "failed", error_code=PilotErrorCode.RUNTIME_MISSING, diagnostics=str(exc)
            )
        except Exception as exc:  # report anything else rather than lose the job
            log.exception("job %s: unexpected pilot error", job_id)
            outcome = Outcome(
                "failed",
                error_code=PilotErrorCode.UNKNOWN,
                diagnostics=f"{type(exc).__name__}: {exc}",
            )
        finally:
            with self._lock:
                self._current, self._proc = None, None
        self._report(spec, workdir, outcome)
        shutil.rmtree(workdir, ignore_errors=True)
        return outcome

    def _cache_binds(self, image: str) -> list[Bind]:
        """The pilot's cache (e.g. JAX compilations), shared by its jobs, where the image
        has the mount point for it."""
        if not (Path(image) / CACHE_IN_CONTAINER.lstrip("/")).is_dir():
            return []
        cache = self.base_dir / "cache"
        (cache / "jax").mkdir(parents=True, exist_ok=True)
        return [Bind(str(cache), CACHE_IN_CONTAINER, writable=True)]

    def _run(self, spec: dict[str, Any], workdir: Path) -> Outcome:
        job_id = spec["job_id"]
        self._update(job_id, {"state": "starting"})
        image = spec.get("image_path")
        if not image or not Path(image).is_dir():
            return Outcome(
                "failed",
                error_code=PilotErrorCode.IMAGE_NOT_FOUND,
                diagnostics=f"image {spec['image']} not found at {image}",
            )
        stage_in(self.server, spec.get("inputs", []), workdir)
        if spec["transform"] != "runcontainer":
            (workdir / "job.json").write_text(json.dumps(spec))
        container = spec.get("container", {})
        runtime = select_runtime(container.get("runtime", "auto"))
        cores = max(1, int(spec.get("cores", 1)))
        env = {**spec.get("image_environment", {}), **spec.get("env", {})}
        env.update({name: str(cores) for name in THREAD_VARIABLES})
        gpu_job = int(spec.get("gpus", 0)) > 0
        devices = device_nodes(self.gpus) if gpu_job else []
        if gpu_job:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(g.uuid for g in self.gpus)
        if (Path(image) / CACHE_IN_CONTAINER.lstrip("/")).is_dir():
            env["JAX_COMPILATION_CACHE_DIR"] = f"{CACHE_IN_CONTAINER}/jax"
        request = ContainerRequest(
            image=Path(image),
            argv=transform_argv(spec),
            workdir=workdir,
            transforms_dir=transforms_dir(),
            env=env,
            binds=[*[Bind.parse(b) for b in container.get("binds", [])], *self._cache_binds(image)],
            allow_network=bool(container.get("allow_network", False)),
            gpu=gpu_job,
            devices=devices,
            gpu_libraries=driver_libraries() if devices else [],
            extra_options=list(container.get("options", [])),
        )
        walltime = float(spec.get("walltime_s", 3600))
        header = (
            f"=== hpcaf pilot {self.pilot_id}: job {job_id} attempt {spec['attempt_nr']} "
            f"with {runtime.name}\n"
        )
        if self._warm_eligible(spec, image):
            result = self._execute_warm(spec, request, runtime, header, walltime)
        else:
            result = self._execute(spec, request, runtime, header, walltime)
        if isinstance(result, Outcome):
            return result
        code, elapsed = result
        with self._lock:
            kill_reason = self._kill_reason
        if kill_reason is not None:
            return Outcome(
                "failed", exit_code=code, error_code=kill_reason[0], diagnostics=kill_reason[1]
            )
        if code != 0:
            diagnostics = f"payload exited with code {code} after {elapsed:.1f}s"
            message = _report_message(workdir)
            if message:
                diagnostics += f": {message}"
            return Outcome(
                "failed",
                exit_code=code,
                error_code=_classify(code, workdir),
                diagnostics=diagnostics,
                outputs=self._partial_outputs(spec, workdir),
            )
        outputs = stage_out(self.server, list(spec.get("outputs", [])), workdir)
        return Outcome("finished", exit_code=0, outputs=outputs)

    def _execute(
        self,
        spec: dict[str, Any],
        request: ContainerRequest,
        runtime: ContainerRuntime,
        header: str,
        walltime: float,
    ) -> Outcome | tuple[int, float]:
        """Run the payload in a fresh container; (exit code, seconds) or an early outcome."""
        job_id = spec["job_id"]
        command = runtime.command(request)
        log.info("job %s: %s", job_id, " ".join(command))
        with (request.workdir / LOG_NAME).open("wb") as log_file:
            log_file.write(header.encode())
            log_file.flush()
            try:
                proc = subprocess.Popen(
                    command,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            except OSError as exc:
                return Outcome(
                    "failed",
                    error_code=PilotErrorCode.CONTAINER_FAILED,
                    diagnostics=f"cannot start {runtime.name}: {exc}",
                )
            with self._lock:
                self._proc = proc
                pending_kill = self._kill_reason
            if pending_kill:
                _terminate(proc)
            self._update(job_id, {"state": "running"})
            started = time.monotonic()
            try:
                code = proc.wait(timeout=walltime)
            except subprocess.TimeoutExpired:
                _terminate(proc)
                code = proc.wait()
                return Outcome(
                    "failed",
                    exit_code=code,
                    error_code=PilotErrorCode.WALLTIME_EXCEEDED,
                    diagnostics=f"payload ran past its walltime of {walltime:.0f}s",
                )
        return code, time.monotonic() - started

    def _warm_eligible(self, spec: dict[str, Any], image: str | None) -> bool:
        return bool(
            self.warm
            and image
            and spec["transform"] in WARM_TRANSFORMS
            and (Path(image) / CACHE_IN_CONTAINER.lstrip("/")).is_dir()
        )

    def _workdir(self, spec: dict[str, Any]) -> Path:
        """Jobs for warm workers live in the scratch area those workers see."""
        name = f"job_{spec['job_id']}"
        if self._warm_eligible(spec, spec.get("image_path")):
            return self.base_dir / "cache" / "jobs" / name
        return self.base_dir / name

    def _execute_warm(
        self,
        spec: dict[str, Any],
        request: ContainerRequest,
        runtime: ContainerRuntime,
        header: str,
        walltime: float,
    ) -> Outcome | tuple[int, float]:
        """Hand the job to the warm worker of its (image, transform), starting one if needed."""
        job_id = spec["job_id"]
        pool = self.warm
        assert pool is not None  # _warm_eligible checked it
        jobs_dir = self.base_dir / "cache" / "jobs"
        server_request = replace(
            request,
            argv=[*transform_argv(spec)[:2], "--serve"],
            workdir=jobs_dir,
            env={k: v for k, v in request.env.items() if k not in spec.get("env", {})},
        )
        key = (
            request.image,
            spec["transform"],
            request.gpu,
            request.env.get("OMP_NUM_THREADS"),
            request.allow_network,
            tuple(request.binds),
        )
        (request.workdir / LOG_NAME).write_bytes(header.encode() + b"=== warm worker\n")
        worker = pool.get(key, runtime.command(server_request), self.base_dir / "warm.log")
        with self._lock:
            self._proc = worker.proc
            pending_kill = self._kill_reason
        if pending_kill:
            pool.discard(key)
        self._update(job_id, {"state": "running"})
        started = time.monotonic()
        code = worker.run(
            {
                "workdir": f"{CACHE_IN_CONTAINER}/jobs/{request.workdir.name}",
                "env": dict(spec.get("env", {})),
            },
            walltime,
        )
        elapsed = time.monotonic() - started
        if code is not None:
            return code, elapsed
        pool.discard(key)
        with self._lock:
            killed = self._kill_reason
        if killed is not None:
            return Outcome("failed", error_code=killed[0], diagnostics=killed[1])
        if elapsed >= walltime:
            return Outcome(
                "failed",
                error_code=PilotErrorCode.WALLTIME_EXCEEDED,
                diagnostics=f"payload ran past its walltime of {walltime:.0f}s",
            )
        return Outcome(
            "failed",
            error_code=PilotErrorCode.CONTAINER_FAILED,
            diagnostics="the warm worker died (see warm.log of the pilot)",
        )

    def close(self) -> None:
        """Stop the warm workers (the pilot is ending)."""
        if self.warm:
            self.warm.close()

    def _report(self, spec: dict[str, Any], workdir: Path, outcome: Outcome) -> None:
        job_id = spec["job_id"]
        body: dict[str, Any] = {"state": outcome.state, "exit_code": outcome.exit_code}
        if int(spec.get("gpus", 0)) > 0:
            body["metrics"] = {"gpus": [g.report() for g in self.gpus]}
        log_path = workdir / LOG_NAME
        if log_path.is_file() and not log_path.is_symlink():
            try:
                reply = self.server.upload(log_path, LOG_NAME)
                body["log"] = {"name": LOG_NAME, "sha256": reply["sha256"], "size": reply["size"]}
            except ServerError as exc:
                log.warning("job %s: log upload failed: %s", job_id, exc)
        body["outputs"] = outcome.outputs or []
        if outcome.state != "finished":
            body["pilot_error_code"] = int(outcome.error_code or PilotErrorCode.UNKNOWN)
            body["pilot_error_diag"] = outcome.diagnostics
        try:
            reply = self._update(job_id, body)
            log.info("job %s: reported %s (server: %s)", job_id, outcome.state, reply.get("status"))
        except ServerError as exc:
            log.error("job %s: final update refused: %s", job_id, exc)

    def _partial_outputs(self, spec: dict[str, Any], workdir: Path) -> list[dict[str, Any]]:
        """Outputs a failed payload did write, uploaded best-effort (kept if no retry follows)."""
        kept = []
        for name in spec.get("outputs", []):
            try:
                kept += stage_out(self.server, [name], workdir)
            except StageError:
                continue
        return kept

    def _update(self, job_id: int, body: dict[str, Any]) -> dict[str, Any]:
        reply = self.server.update_job({"job_id": job_id, "pilot_id": self.pilot_id, **body})
        if reply.get("command") == "tobekilled":
            self.kill(job_id, PilotErrorCode.KILLED, "killed on the server's command")
        return reply


def _report_message(workdir: Path, limit: int = 1000) -> str | None:
    """The transform's own account of a failure (``exitMsg`` of jobReport.json, as in PanDA)."""
    path = workdir / "jobReport.json"
    if not path.is_file() or path.is_symlink() or path.stat().st_size > 1 << 20:
        return None
    try:
        report = json.loads(path.read_text(errors="replace"))
    except ValueError:
        return None
    message = report.get("exitMsg") if isinstance(report, dict) else None
    if not isinstance(message, str) or message in ("", "OK"):
        return None
    return message.replace("\x00", "")[:limit]  # the server refuses NULs in text


def _classify(code: int, workdir: Path) -> PilotErrorCode:
    """Exit 65 means bad input (no retry); a runtime failure before the payload is a
    container error; anything else is a payload failure."""
    if code == EXIT_BAD_INPUT:
        return PilotErrorCode.PAYLOAD_BAD_INPUT
    if code == EXIT_NO_GPU:
        return PilotErrorCode.GPU_NOT_VISIBLE
    try:
        text = (workdir / LOG_NAME).read_text(errors="replace")
    except OSError:
        return PilotErrorCode.PAYLOAD_FAILED
    if "=== runcontainer:" not in text and ("bwrap:" in text or "FATAL:" in text):
        return PilotErrorCode.CONTAINER_FAILED
    return PilotErrorCode.PAYLOAD_FAILED


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the payload's process group, SIGKILL after a grace period."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
