#!/usr/bin/env python3
"""A fault campaign: a task runs while pilots, payloads, the harvester and the
database are killed under it; then the database is audited for lost and
duplicated work.

A harvester with one local queue of ``--slots`` pilots runs a task of
``--jobs`` jobs (each sleeps ``--payload-s`` seconds in the base image and
writes one output). Every ``--every`` seconds, until the task ends, the next
fault of the cycle is injected:

* ``pilot-kill``: SIGKILL a pilot (its job is failed by the heartbeat watchdog
  and retried; the monitor sees the worker gone and the submitter replaces it);
* ``pilot-term``: SIGTERM a pilot (it reports its job failed with 1145 and exits);
* ``payload-kill``: SIGKILL a running container (the pilot reports the failure);
* ``harvester-kill``: SIGKILL ``harvester serve``, restart it 2 s later;
* ``database-stop`` (PostgreSQL only): stop the server for 5 s (scripts/postgres).

When the task has ended, the audit reads the database: every unit of work must
have exactly one finished attempt and one registered output, and no attempt
may have been dispatched twice. It prints the faults injected and these
counts, and exits non-zero when anything is lost or duplicated.

    python bench/faults.py [--jobs 300] [--slots 4] [--every 6]
    scripts/postgres up   # then:
    python bench/faults.py --database-url postgresql+psycopg://postgres@127.0.0.1:54329/hpcaf

The base image must be built (``make image``, or any test run).
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
from local_harvester import REPO, free_port, fresh_database, new_home
from sqlalchemy import create_engine, text

CONFIG = """
[queues.ANALY_FAULTS]
provider = "local"
maxWalltime = 900
maxWorkers = {slots}
nQueueLimitWorker = {slots}
maxNewWorkersPerCycle = {slots}
"""


class Service:
    """``harvester serve`` on a fixed port and home, that can be killed and restarted."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home, self.env = home, env
        self.proc: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str, module: str = "harvester.cli") -> str:
        return subprocess.run(
            [sys.executable, "-m", module, *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    def start(self) -> None:
        with (self.home / "serve.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "harvester.cli", "serve"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        url = self.env["HPCAF_URL"]
        for _ in range(150):
            try:
                httpx.get(f"{url}/docs", timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError(f"the harvester did not start; see {self.home / 'serve.log'}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None:
            self.proc.send_signal(sig)
            self.proc.wait(30)
            self.proc = None


def processes() -> dict[int, tuple[int, str]]:
    """Every process: pid → (parent pid, command line)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        found[int(entry.name)] = (parent, cmdline)
    return found


def pilots(home: Path) -> list[int]:
    token = str(home / "pilot.token")
    return sorted(
        pid for pid, (_, cmd) in processes().items() if "pilot.main" in cmd and token in cmd
    )


def payloads(home: Path) -> list[int]:
    """The outermost container process under each pilot of ``home``."""
    table = processes()
    ours = set(pilots(home))
    return sorted(pid for pid, (parent, cmd) in table.items() if parent in ours and "bwrap" in cmd)


def signal_one(pids: list[int], sig: int) -> bool:
    for pid in pids:
        try:
            os.kill(pid, sig)
            return True
        except ProcessLookupError:
            continue
    return False


def database_command(action: str) -> None:
    subprocess.run([str(REPO / "scripts" / "postgres"), action], check=True, capture_output=True)


def task_status(service: Service, task_id: int) -> str | None:
    try:
        reply = httpx.get(
            f"{service.env['HPCAF_URL']}/api/v1/tasks/{task_id}",
            headers={"Authorization": f"Bearer {service.env['HPCAF_TOKEN']}"},
            timeout=5,
        )
    except httpx.HTTPError:
        return None
    return str(reply.json()["status"]) if reply.status_code == 200 else None


ENDED = ("done", "finished", "failed", "aborted", "broken")


def wait_for_end(service: Service, task_id: int, seconds: float) -> str | None:
    """The task's final status if it ends within ``seconds``, else None."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        status = task_status(service, task_id)
        if status in ENDED:
            return status
        time.sleep(0.5)
    return None


def inject(kind: str, service: Service) -> bool:
    """Inject one fault of ``kind``; False when there was nothing to hit (no pilot yet)."""
    if kind == "pilot-kill":
        return signal_one(pilots(service.home), signal.SIGKILL)
    if kind == "pilot-term":
        return signal_one(pilots(service.home), signal.SIGTERM)
    if kind == "payload-kill":
        return signal_one(payloads(service.home), signal.SIGKILL)
    if kind == "harvester-kill":
        service.kill()
        time.sleep(2)
        service.start()
        return True
    if kind == "database-stop":
        database_command("stop")
        time.sleep(5)
        database_command("start")
        return True
    raise ValueError(f"unknown fault {kind!r}")


def audit(url: str, task_id: int, n_jobs: int) -> dict[str, int]:
    engine = create_engine(url)
    with engine.connect() as conn:

        def rows(sql: str) -> list[tuple[int, int]]:
            return [(int(a), int(b)) for a, b in conn.execute(text(sql), {"t": task_id})]

        finished = dict(
            rows(
                "SELECT job_index, count(*) FROM jobs WHERE task_id = :t AND status = 'finished' "
                "GROUP BY job_index"
            )
        )
        outputs = dict(
            rows(
                "SELECT j.job_index, count(*) FROM files f JOIN jobs j ON f.job_id = j.id "
                "WHERE f.kind = 'output' AND j.task_id = :t GROUP BY j.job_index"
            )
        )
        sent = rows(
            "SELECT h.entity_id, count(*) FROM state_history h JOIN jobs j ON j.id = h.entity_id "
            "WHERE h.entity = 'job' AND h.to_status = 'sent' AND j.task_id = :t "
            "GROUP BY h.entity_id"
        )
        attempts = conn.execute(
            text("SELECT count(*) FROM jobs WHERE task_id = :t"), {"t": task_id}
        ).scalar_one()
    engine.dispose()
    return {
        "units of work": n_jobs,
        "attempts": int(attempts),
        "retried attempts": int(attempts) - n_jobs,
        "lost (no finished attempt)": sum(1 for i in range(n_jobs) if i not in finished),
        "finished twice": sum(1 for n in finished.values() if n > 1),
        "output registered twice or missing": sum(
            1 for i in range(n_jobs) if outputs.get(i, 0) != 1
        ),
        "attempt dispatched twice": sum(1 for _, n in sent if n > 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--payload-s", type=float, default=1.0)
    parser.add_argument("--every", type=float, default=6.0, help="seconds between faults")
    parser.add_argument("--database-url", default=None, help="default: a SQLite file")
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()

    home = new_home("hpcaf-faults-")
    url = args.database_url or f"sqlite:///{home / 'harvester.db'}"
    fresh_database(url).dispose()
    on_postgres = url.startswith("postgresql")
    (home / "harvester.toml").write_text(CONFIG.format(slots=args.slots))
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("HPCAF_")},
        "HPCAF_HOME": str(home),
        "HPCAF_PORT": str(port),
        "HPCAF_URL": f"http://127.0.0.1:{port}",
        "HPCAF_DATABASE_URL": url,
        "HPCAF_IMAGE_CACHE": os.environ.get("HPCAF_IMAGE_CACHE", str(REPO / ".cache" / "images")),
        "HPCAF_AGENT_INTERVAL_S": "0.5",
        "HPCAF_HEARTBEAT_INTERVAL_S": "1",
        "HPCAF_HEARTBEAT_TIMEOUT_S": "8",
        "HPCAF_PILOT_MAX_IDLE_S": "5",
        "HPCAF_SUBMIT_RETRY_BACKOFF_S": "2",
        "HPCAF_LEASE_S": "6",
        "PYTHONPATH": str(REPO),
    }
    service = Service(home, env)
    env["HPCAF_TOKEN"] = service.cli("token", "create", "faults").strip().splitlines()[-1]
    service.start()
    submitted = service.cli(
        "--containerImage", "base",
        "--exec", f"sleep {args.payload_s}; echo $HPCAF_JOB_INDEX > i.txt",
        "--outputs", "i.txt", "--outDS", "user.faults.campaign",
        "--nJobs", str(args.jobs), "--maxAttempt", "20", "--site", "ANALY_FAULTS",
        module="harvester.client.pcontainer",
    )  # fmt: skip
    task_id = int(submitted.split("jediTaskID=", 1)[1].split()[0])

    kinds = ["pilot-kill", "payload-kill", "harvester-kill", "pilot-term"]
    if on_postgres:
        kinds.append("database-stop")
    injected: Counter[str] = Counter()
    started = time.monotonic()
    status = None
    try:
        for kind in itertools.cycle(kinds):
            status = wait_for_end(service, task_id, args.every)
            if status is not None or time.monotonic() - started > args.timeout:
                break
            if inject(kind, service):
                injected[kind] += 1
        wall = time.monotonic() - started
    finally:
        service.kill(signal.SIGTERM)
    figures = audit(url, task_id, args.jobs)
    print(f"fault campaign: {'PostgreSQL' if on_postgres else 'SQLite'}, {args.slots} pilots")
    print(f"  task {task_id}: {status} after {wall:.0f} s")
    for kind in kinds:
        print(f"  faults: {kind:<34} {injected[kind]:>6}")
    print(f"  faults: {'total':<34} {sum(injected.values()):>6}")
    for name, value in figures.items():
        print(f"  {name:<42} {value:>6}")
    print(f"  (harvester home: {home})")
    bad = sum(v for k, v in figures.items() if "twice" in k or "lost" in k)
    return 0 if status == "done" and bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
