"""A throw-away harvester for the benchmarks: free loopback port, temporary home."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy import Engine

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fresh_database(url: str) -> Engine:
    """An engine on an empty, migrated database (PostgreSQL tables are dropped first)."""
    from db.engine import make_engine
    from db.migrate import upgrade
    from db.models import Base

    engine = make_engine(url)
    if engine.dialect.name == "postgresql":
        Base.metadata.drop_all(engine)
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
    upgrade(engine)
    return engine


def new_home(prefix: str = "hpcaf-bench-") -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


def create_token(env: dict[str, str], user: str, role: str) -> str:
    """A token of ``role`` for ``user``, made by the admin CLI on the harvester's home."""
    made = subprocess.run(
        [sys.executable, "-m", "harvester.cli", "token", "create", user, "--role", role],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return made.stdout.strip().splitlines()[-1]


@contextmanager
def harvester(
    home: Path,
    config_text: str,
    *,
    serve_args: Sequence[str] = (),
    database_url: str | None = None,
    role: str = "user",
) -> Iterator[dict[str, str]]:
    """Start ``harvester serve`` on ``home``; yields the client environment (HPCAF_URL and
    a token of ``role`` in HPCAF_TOKEN). Its log stays in ``home/serve.log``."""
    port = free_port()
    (home / "harvester.toml").write_text(config_text)
    env = {
        **os.environ,
        "HPCAF_HOME": str(home),
        "HPCAF_PORT": str(port),
        "HPCAF_AGENT_INTERVAL_S": "0.5",
        "HPCAF_PILOT_MAX_IDLE_S": "5",
        "HPCAF_IMAGE_CACHE": os.environ.get("HPCAF_IMAGE_CACHE", str(REPO / ".cache" / "images")),
    }
    if database_url:
        env["HPCAF_DATABASE_URL"] = database_url
    command = [sys.executable, "-m", "harvester.cli"]
    token = create_token(env, "bench", role)
    with (home / "serve.log").open("wb") as log:
        server = subprocess.Popen(
            [*command, "serve", *serve_args], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        import httpx

        for _ in range(100):
            try:
                httpx.get(f"http://127.0.0.1:{port}/docs", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield {**env, "HPCAF_URL": f"http://127.0.0.1:{port}", "HPCAF_TOKEN": token}
    except Exception:
        print(f"the harvester's log: {home / 'serve.log'}", file=sys.stderr)
        raise
    finally:
        server.terminate()
        server.wait()


@contextmanager
def local_harvester(slots: int, compile_cache: Path | None = None) -> Iterator[dict[str, str]]:
    """A harvester with one local queue of ``slots`` pilots (agents included);
    ``compile_cache``: the queue's site compilation cache (default: none)."""
    home = new_home()
    config = f"""
[queues.ANALY_LOCAL]
provider = "local"
maxWorkers = {slots}
nQueueLimitWorker = {slots}
maxNewWorkersPerCycle = {slots}
"""
    if compile_cache is not None:
        config += f"compileCache = {json.dumps(str(compile_cache))}\n"  # a TOML string
    with harvester(home, config) as env:
        yield env


TASK_ENDED = ("done", "finished", "failed", "broken", "aborted")


def wait_for_job(client: Any, task_id: int, timeout_s: float, poll_s: float = 0.2) -> Any:
    """The one job of a one-job task, once the task ended; ``RuntimeError`` unless the job
    finished within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while client.task(task_id)["status"] not in TASK_ENDED:
        if time.monotonic() > deadline:
            raise RuntimeError(f"task {task_id} did not end in {timeout_s:.0f} s")
        time.sleep(poll_s)
    (job,) = client.jobs(task_id)
    if job["status"] != "finished":
        raise RuntimeError(f"task {task_id}: job {job['status']}: {job.get('pilot_error_diag')}")
    return job
