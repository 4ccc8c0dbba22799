"""The local provider: each worker is a pilot started as a process on this machine.

The pilot runs under a small shell script that records the pilot's exit code
in the worker directory, so a restarted harvester can still tell how a worker
ended; a worker whose process is gone without an exit code is ``missed``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from harvester.errors import ProviderError
from harvester.providers.base import BatchStatus, Provider, WorkerResources
from protocol.states import WorkerStatus

EXIT_CODE_FILE = "exit_code"
CLOSE_GRACE_S = 10.0
"""How long pilots get to report after SIGTERM when the harvester stops, before SIGKILL."""

SCRIPT_TEMPLATE = """\
#!/bin/sh
# hpcaf worker {name}
cd "{workdir}" || exit 1
{command}
echo $? > "{workdir}/{exit_file}.tmp" && mv "{workdir}/{exit_file}.tmp" "{workdir}/{exit_file}"
"""


class LocalProvider(Provider):
    """Pilots as local processes, each in its own session (process group)."""

    label = "local"

    def __init__(self, polling_interval_s: float = 2.0) -> None:
        self._polling_interval_s = polling_interval_s
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._workdirs: dict[str, Path] = {}
        self._closed = False

    @property
    def polling_interval_s(self) -> float:
        return self._polling_interval_s

    def render_script(self, command: str, name: str, workdir: Path) -> str:
        return SCRIPT_TEMPLATE.format(
            name=name, workdir=workdir, command=command, exit_file=EXIT_CODE_FILE
        )

    def submit(self, command: str, resources: WorkerResources, name: str, workdir: Path) -> str:
        if self._closed:
            raise ProviderError("the harvester is stopping: no new local pilots")
        workdir.mkdir(parents=True, exist_ok=True)
        script = workdir / "pilot.sh"
        script.write_text(self.render_script(command, name, workdir))
        script.chmod(0o700)
        try:
            with (workdir / "stdout").open("wb") as out, (workdir / "stderr").open("wb") as err:
                proc = subprocess.Popen(
                    ["/bin/sh", str(script)],
                    cwd=workdir,
                    stdout=out,
                    stderr=err,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
        except OSError as exc:
            raise ProviderError(f"local provider could not start {script}: {exc}") from exc
        batch_id = str(proc.pid)
        self._children[batch_id] = proc
        self._workdirs[batch_id] = workdir
        return batch_id

    def track(self, batch_id: str, workdir: Path) -> None:
        """A restarted harvester finds an existing worker's exit code in its directory."""
        self._workdirs.setdefault(batch_id, workdir)

    def status(self, batch_ids: list[str]) -> dict[str, BatchStatus]:
        return {batch_id: self._status(batch_id) for batch_id in batch_ids}

    def _status(self, batch_id: str) -> BatchStatus:
        workdir = self._workdirs.get(batch_id)
        child = self._children.get(batch_id)
        running = child.poll() is None if child is not None else _process_alive(int(batch_id))
        if running:
            return BatchStatus(WorkerStatus.RUNNING, "running")
        self._children.pop(batch_id, None)
        exit_file = workdir / EXIT_CODE_FILE if workdir else None
        if exit_file is not None and exit_file.is_file():
            code = int(exit_file.read_text().strip() or "1")
            if code == 0:
                return BatchStatus(WorkerStatus.FINISHED, "exited", exit_code=0)
            return BatchStatus(
                WorkerStatus.FAILED,
                "exited",
                exit_code=code,
                message=f"pilot exited with code {code}{_stderr_tail(workdir)}",
            )
        return BatchStatus(
            WorkerStatus.MISSED, "gone", message="pilot process vanished without an exit code"
        )

    def cancel(self, batch_ids: list[str]) -> None:
        for batch_id in batch_ids:
            _signal_group(batch_id, signal.SIGTERM)

    def close(self) -> None:
        """Local pilots are this harvester's children: they do not outlive it, polling an
        address nobody answers with their warm workers' memory held. SIGTERM first (the
        pilot stops its containers and tries to report; the API may already be closed),
        SIGKILL after ``CLOSE_GRACE_S``. The next harvester finds these workers gone and
        retries their jobs once their heartbeats are overdue. No pilot starts after this."""
        self._closed = True
        running = [b for b, child in list(self._children.items()) if child.poll() is None]
        for batch_id in running:
            _signal_group(batch_id, signal.SIGTERM)
        deadline = time.monotonic() + CLOSE_GRACE_S
        for batch_id in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._children[batch_id].wait(max(0.0, deadline - time.monotonic()))
            _signal_group(batch_id, signal.SIGKILL)  # what the pilot left in its group


def _signal_group(batch_id: str, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
        os.killpg(int(batch_id), sig)


def _process_alive(pid: int) -> bool:
    """Alive and not a zombie (``kill -0`` says yes to zombies)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def _stderr_tail(workdir: Path | None, limit: int = 400) -> str:
    if workdir is None:
        return ""
    try:
        text = (workdir / "stderr").read_text(errors="replace").strip()
    except OSError:
        return ""
    return f": {text[-limit:]}" if text else ""
