"""Starting real harvester and pilot processes for the tests, and talking to them."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import MetaData, create_engine, text

REPO = Path(__file__).resolve().parent.parent
_CHECKOUT = zlib.crc32(str(REPO).encode())
PG_ENV: dict[str, str] = {
    "HPCAF_PG_DIR": f"/tmp/hpcaf-pg-tests-{_CHECKOUT:08x}",
    "HPCAF_PG_PORT": str(54331 + _CHECKOUT % 600),
}
"""Where the tests' PostgreSQL server lives (scripts/postgres): one per checkout, so that
test runs of two checkouts on one machine do not stop each other's server."""


_IMAGE_LOCKS: dict[str, threading.Lock] = {}
_IMAGE_LOCKS_GUARD = threading.Lock()


def prebuild_image(cache: Path, definition: str, name: str) -> None:
    """Start :func:`ensure_image` on a thread of its own: the first test that needs the
    image waits for that build instead of starting one (the builds are mostly downloads
    and unpacking, which overlap well with the tests that run meanwhile)."""
    threading.Thread(
        target=ensure_image, args=(cache, definition, name), name=f"build-{name}", daemon=True
    ).start()


def ensure_image(cache: Path, definition: str, name: str) -> None:
    """Build ``containers/<definition>`` into the test image cache unless it is there,
    built from this same definition (a changed definition is built again). One build per
    image at a time: a second caller waits for the first's."""
    with _IMAGE_LOCKS_GUARD:
        lock = _IMAGE_LOCKS.setdefault(name, threading.Lock())
    with lock:
        _ensure_image(cache, definition, name)


def _ensure_image(cache: Path, definition: str, name: str) -> None:
    source = REPO / "containers" / definition
    recorded = cache / name / "image.json"
    if (cache / name / "rootfs").is_dir() and recorded.is_file():
        made_from = json.loads(recorded.read_text()).get("definition_sha256")
        if made_from == hashlib.sha256(source.read_bytes()).hexdigest():
            return
    env = {**os.environ, "HPCAF_IMAGE_CACHE": str(cache), "HPCAF_HOME": str(cache.parent)}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "harvester.cli",
            "image",
            "build",
            str(source),
            "--name",
            name,
            "--force",
        ],
        env=env,
        check=True,
        cwd=REPO,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll until ``predicate`` returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@dataclass
class Harvester:
    """A running ``harvester serve`` with its home, tokens and helpers."""

    home: Path
    url: str
    env: dict[str, str]
    tokens: dict[str, str]
    config_file: Path
    proc: subprocess.Popen[bytes] | None = None
    pilots: list[subprocess.Popen[bytes]] = field(default_factory=list)
    serve_args: tuple[str, ...] = ()

    # -- processes ---------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        log = (self.home / "serve.log").open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "harvester.cli",
                "serve",
                "--config",
                str(self.config_file),
                *self.serve_args,
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.home,
        )

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError("harvester exited:\n" + self.log_text()[-3000:])
            try:
                return httpx.get(self.url + "/docs", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout, "the harvester to answer")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log_text(self) -> str:
        path = self.home / "serve.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start_pilot(self, queue: str, *extra: str) -> subprocess.Popen[bytes]:
        """A pilot started by hand (not by a provider), as a site admin would test one."""
        log = (self.home / f"pilot-{len(self.pilots)}.log").open("ab")
        env = {**self.env, "HPCAF_TOKEN": self.tokens["pilot"]}
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pilot.main",
                "--server",
                self.url,
                "--queue",
                queue,
                "--max-idle",
                "3",
                "--poll",
                "0.3",
                "--heartbeat",
                "1",
                *extra,
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pilots.append(proc)
        return proc

    def cleanup(self) -> None:
        self.stop()
        for proc in self.pilots:
            _kill_group(proc.pid)
        # local workers are process groups of this machine (Slurm ids are not pids!)
        for (batch_id,) in self.query(
            "SELECT batch_id FROM workers WHERE provider = 'local' AND batch_id IS NOT NULL"
        ):
            if str(batch_id).isdigit():
                _kill_group(int(batch_id))

    # -- clients -----------------------------------------------------------------

    def cli(self, module: str, *args: str, user: str = "alice", timeout: float = 120) -> CliResult:
        env = {**self.env, "HPCAF_URL": self.url, "HPCAF_TOKEN": self.tokens.get(user, user)}
        proc = subprocess.run(
            [sys.executable, "-m", module, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.user_dir,
        )
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    @property
    def user_dir(self) -> Path:
        """Where the user CLIs run: a folder of the user's own, as a user submits from a
        project folder (``pcontainer`` ships it to the jobs), not the harvester's home."""
        folder = self.home / "user"
        folder.mkdir(exist_ok=True)
        return folder

    def pcontainer(self, *args: str, user: str = "alice") -> CliResult:
        return self.cli("harvester.client.pcontainer", *args, user=user)

    def pbook(self, *args: str, user: str = "alice", timeout: float = 180) -> CliResult:
        return self.cli("harvester.client.pbook", *args, user=user, timeout=timeout)

    def submit(self, *args: str, user: str = "alice") -> int:
        result = self.pcontainer(*args, user=user)
        assert result.returncode == 0, result.output
        line = [ln for ln in result.stdout.splitlines() if ln.startswith("jediTaskID=")]
        assert line, result.output
        return int(line[0].split("=", 1)[1])

    def api(self, user: str = "alice") -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[user]}"} if user in self.tokens else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def task(self, task_id: int) -> dict[str, Any]:
        with self.api("admin") as c:
            response = c.get(f"/api/v1/tasks/{task_id}")
            response.raise_for_status()
            result: dict[str, Any] = response.json()
            return result

    def jobs(self, task_id: int) -> list[dict[str, Any]]:
        with self.api("admin") as c:
            result: list[dict[str, Any]] = c.get(f"/api/v1/tasks/{task_id}/jobs").json()
            return result

    def wait_task(self, task_id: int, timeout: float = 120.0) -> dict[str, Any]:
        terminal = {"done", "finished", "failed", "aborted", "broken"}
        task: dict[str, Any] = wait_for(
            lambda: (t := self.task(task_id))["status"] in terminal and t,
            timeout,
            f"task {task_id} to end",
        )
        return task

    def wait_activated(self, task_id: int, n: int, timeout: float = 60.0) -> None:
        wait_for(
            lambda: self.task(task_id)["job_counts"].get("activated") == n,
            timeout,
            f"{n} activated jobs of task {task_id}",
        )

    def job_status(self, task_id: int, index: int = 0) -> str | None:
        jobs = [j for j in self.jobs(task_id) if j["job_index"] == index]
        return jobs[-1]["status"] if jobs else None

    @property
    def database_url(self) -> str:
        return self.env.get("HPCAF_DATABASE_URL") or f"sqlite:///{self.home / 'harvester.db'}"

    def query(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        """Read the harvester's database directly (the tests' view of the truth)."""
        engine = create_engine(self.database_url)
        try:
            with engine.connect() as conn:
                return [tuple(r) for r in conn.execute(text(sql), params)]
        finally:
            engine.dispose()


def database_dump(url: str) -> str:
    """Every row of every table of a database, as text (what a leaked backup would show)."""
    engine = create_engine(url)
    try:
        tables = MetaData()
        tables.reflect(engine)
        with engine.connect() as conn:
            return "\n".join(
                repr(tuple(row))
                for table in tables.sorted_tables
                for row in conn.execute(table.select())
            )
    finally:
        engine.dispose()


def process_running(needle: str) -> bool:
    """Whether any live process's command line holds ``needle`` (a payload that must be
    gone after a kill or a failed rank)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode():
                    return True
            except OSError:
                continue
    return False


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


QUEUE_LOCAL = """
[queues.ANALY_LOCAL]
provider = "local"
cores = 1
memory_mb = 2000
maxWalltime = 600
maxWorkers = {max_workers}
nQueueLimitWorker = {max_workers}
maxNewWorkersPerCycle = {max_workers}
"""

QUEUE_MANUAL = """
[queues.ANALY_MANUAL]
provider = "local"
cores = 1
memory_mb = 2000
maxWalltime = 600
maxWorkers = 0
"""


def harvester_settings(
    extra_queues: str = "", *, max_workers: int = 2, compile_cache: Path | None = None
) -> str:
    """The test queues; ``compile_cache``: the local queue's site compilation cache."""
    local = QUEUE_LOCAL.format(max_workers=max_workers)
    if compile_cache is not None:
        local = local.rstrip("\n") + f"\ncompileCache = {json.dumps(str(compile_cache))}\n"
    return local + QUEUE_MANUAL + extra_queues


def make_harvester(
    tmp: Path,
    image_cache: Path,
    config_text: str,
    env_overrides: dict[str, str] | None = None,
    serve_args: tuple[str, ...] = (),
) -> Harvester:
    """Write the config, create the tokens (the CLI's ``token create``) and start the service."""
    home = tmp / "home"
    home.mkdir(parents=True, exist_ok=True)
    port = int((env_overrides or {}).get("HPCAF_PORT") or free_port())
    config_file = home / "harvester.toml"
    config_file.write_text(config_text)
    env = {key: value for key, value in os.environ.items() if not key.startswith("HPCAF_")}
    env.update(
        {
            "HPCAF_HOME": str(home),
            "HPCAF_IMAGE_CACHE": str(image_cache),
            "HPCAF_PALLET_CACHE": str(home / "client-cache"),
            "HPCAF_PORT": str(port),
            "HPCAF_AGENT_INTERVAL_S": "0.3",
            "HPCAF_HEARTBEAT_INTERVAL_S": "1",
            "HPCAF_HEARTBEAT_TIMEOUT_S": "6",
            "HPCAF_PILOT_MAX_IDLE_S": "3",
            "HPCAF_SUBMIT_RETRY_BACKOFF_S": "2",
            "PYTHONPATH": str(REPO),
            **(env_overrides or {}),
        }
    )
    # The CLI's own command, for the four tokens in one process: a CLI process per token
    # cost every harvester of the suite seconds of imports.
    users = (("alice", "user"), ("bob", "user"), ("admin", "admin"), ("pilot", "pilot"))
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from harvester.cli import RoleChoice, token_create\n"
        f"for user, role in {users!r}:\n"
        "    token_create(user, RoleChoice(role), Path(sys.argv[1]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(config_file)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        cwd=home,
    )
    assert proc.returncode == 0, proc.stderr
    printed = proc.stdout.split()
    assert len(printed) == len(users), proc.stdout
    tokens = {user: token for (user, _), token in zip(users, printed, strict=True)}
    harvester = Harvester(
        home=home,
        url=f"http://127.0.0.1:{port}",
        env=env,
        tokens=tokens,
        config_file=config_file,
        serve_args=serve_args,
    )
    harvester.start()
    return harvester
