"""``pilot``: the daemon in each batch slot — acquire jobs, run them, report, repeat.

It keeps taking jobs while walltime remains (a multi-job pilot), exits after
``--max-idle`` seconds without work, and on SIGTERM/SIGINT stops the payload,
reports the job failed (so it is retried) and exits.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from pilot.gpus import Gpu
from pilot.gpus import discover as discover_gpus
from pilot.heartbeat import Heartbeat
from pilot.job import JobRunner
from pilot.link import HarvesterLink, ServerError
from pilot.messenger import SharedFsLink
from pilot.node import discover
from pilot.polling import PollBackoff
from pilot.server import PilotServer
from pilot.slots import Free, SlotLedger
from pilot.specs import UnreadableJob
from pilot.supervision import KILLED_BY_SERVER
from protocol.error_codes import PilotErrorCode
from protocol.pilot import JobSpec

log = logging.getLogger("pilot")

EXIT_OK = 0
EXIT_SIGNALLED = 143
EXIT_CONFIG = 2
EXIT_SERVER = 3
WALLTIME_MARGIN_S = 30.0
LONG_POLL_S = 5.0
"""Longest the server holds an empty acquire: also how long a signal may wait for it."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="pilot", description=__doc__.splitlines()[0])
    parser.add_argument("--server", default=os.environ.get("HPCAF_URL", "http://127.0.0.1:8080"))
    parser.add_argument(
        "--messenger-dir",
        type=Path,
        default=Path(os.environ["HPCAF_MESSENGER_DIR"])
        if os.environ.get("HPCAF_MESSENGER_DIR")
        else None,
        help="reach the harvester through files in this folder of a shared filesystem "
        "(compute nodes without a network), not over HTTP",
    )
    parser.add_argument("--queue", required=True, help="the PanDA queue this slot serves")
    parser.add_argument("--token", default=None, help="pilot token (default $HPCAF_TOKEN)")
    parser.add_argument("--token-file", type=Path, default=None, help="file holding the token")
    parser.add_argument(
        "--worker-id",
        type=int,
        default=int(os.environ["HPCAF_WORKER_ID"]) if os.environ.get("HPCAF_WORKER_ID") else None,
    )
    parser.add_argument("--max-jobs", type=int, default=0, help="0: no limit")
    parser.add_argument("--walltime", type=float, default=3600.0, help="seconds this slot lives")
    parser.add_argument(
        "--max-idle", type=float, default=10.0, help="exit after this many seconds without a job"
    )
    parser.add_argument(
        "--poll", type=float, default=1.0, help="seconds to wait after the first empty acquire"
    )
    parser.add_argument(
        "--poll-max",
        type=float,
        default=30.0,
        help="longest wait between empty acquires (each wait is 1.5 times the last)",
    )
    parser.add_argument(
        "--no-long-poll",
        dest="long_poll",
        action="store_false",
        help="sleep between empty acquires instead of having the server hold them",
    )
    parser.add_argument(
        "--heartbeat",
        type=float,
        default=None,
        help="heartbeat interval (default: what the server says)",
    )
    parser.add_argument("--cores", type=int, default=None, help="cores of this slot")
    parser.add_argument(
        "--nodes",
        type=int,
        default=1,
        help="nodes of this pilot's allocation: above 1, it runs jobs of that many nodes, "
        "one at a time, their ranks on every node through srun",
    )
    parser.add_argument(
        "--memory",
        type=int,
        default=None,
        help="MiB of memory of this slot (default: the batch allocation, else the node's)",
    )
    parser.add_argument(
        "--no-pack",
        dest="pack",
        action="store_false",
        help="run one job at a time, whatever the slot holds (default: pack jobs that fit)",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="where job dirs are made")
    parser.add_argument(
        "--nvidia-smi",
        dest="nvidia_smi",
        type=Path,
        default=None,
        help="recorded nvidia-smi query output to use instead of running it",
    )
    parser.add_argument(
        "--no-warm",
        action="store_true",
        help="start every fit job in a fresh container (no warm workers)",
    )
    parser.add_argument(
        "--compile-cache",
        type=Path,
        default=Path(os.environ["HPCAF_COMPILE_CACHE"])
        if os.environ.get("HPCAF_COMPILE_CACHE")
        else None,
        help="the site's compilation cache, shared by its pilots (a folder per user)",
    )
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def read_token(args: argparse.Namespace) -> str | None:
    if args.token:
        return str(args.token)
    if args.token_file is not None:
        return args.token_file.read_text().strip()
    if os.environ.get("HPCAF_TOKEN_FILE"):
        return Path(os.environ["HPCAF_TOKEN_FILE"]).read_text().strip()
    return os.environ.get("HPCAF_TOKEN")


def default_workdir(nodes: int) -> Path:
    """Where job dirs are made: the node's temporary space; for an allocation of several
    nodes, the worker's folder (the pilot starts in it), on the shared filesystem that
    every node's ranks see."""
    if nodes > 1:
        return Path.cwd() / "jobs"
    return Path(tempfile.mkdtemp(prefix="hpcaf-pilot-"))


def open_link(
    args: argparse.Namespace, token: str, pilot_id: str, stopping: threading.Event
) -> HarvesterLink:
    """HTTP to ``--server``, or files in ``--messenger-dir`` where the node has no network."""
    if args.messenger_dir is not None:
        return SharedFsLink(args.messenger_dir, token, pilot_id, stop=stopping)
    return PilotServer(args.server, token, stop=stopping)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s pilot %(levelname)s: %(message)s"
    )
    try:
        token = read_token(args)
    except OSError as exc:
        log.error("cannot read the token: %s", exc)
        return EXIT_CONFIG
    if not token:
        log.error("no token: give --token, --token-file, or set HPCAF_TOKEN")
        return EXIT_CONFIG
    node = discover(args.cores, args.memory, args.nodes)
    pilot_id = f"{node.hostname}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    base_dir = args.workdir or default_workdir(args.nodes)
    base_dir.mkdir(parents=True, exist_ok=True)
    stopping = threading.Event()
    try:
        server = open_link(args, token, pilot_id, stopping)
    except ServerError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    gpus = discover_gpus(args.nvidia_smi, os.environ)
    runner = JobRunner(
        server,
        pilot_id,
        base_dir,
        node.cores,
        gpus,
        warm=not args.no_warm,
        compile_cache=args.compile_cache,
    )
    ledger = SlotLedger(node.cores, node.memory_mb, gpus, pack=args.pack and args.nodes == 1)

    def on_signal(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        log.warning("got %s: stopping the payload and exiting", name)
        stopping.set()
        runner.kill(None, PilotErrorCode.PILOT_SIGNALLED, f"pilot received {name}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info(
        "pilot %s on queue %s, server %s, worker %s, %d cores, %d MiB, %s, GPUs: %s",
        pilot_id,
        args.queue,
        server.where,
        args.worker_id,
        node.cores,
        node.memory_mb,
        f"{args.nodes} nodes, one job at a time"
        if args.nodes > 1
        else "packing jobs"
        if args.pack
        else "one job at a time",
        ", ".join(f"{g.index} {g.name}" for g in gpus) or "none",
    )
    try:
        server.worker_node(
            {
                "pilot_id": pilot_id,
                "worker_id": args.worker_id,
                "node": node.hostname,
                "cores": node.cores,
                "memory_mb": node.memory_mb,
                "gpus": [g.report() for g in gpus],
            }
        )
    except ServerError as exc:
        log.error("cannot register with %s: %s", server.where, exc)
        server.close()
        return EXIT_SERVER
    heartbeat = Heartbeat(
        server,
        pilot_id,
        args.worker_id,
        args.heartbeat or 30.0,
        on_kill=lambda job_id: runner.kill(job_id, PilotErrorCode.KILLED, KILLED_BY_SERVER),
    )
    heartbeat.start()
    try:
        done = JobLoop(args, server, runner, ledger, heartbeat, pilot_id, node.hostname).run(
            stopping
        )
    finally:
        heartbeat.stop()
        runner.close()
        server.close()
    log.info("pilot %s exits after %d jobs", pilot_id, done)
    return EXIT_SIGNALLED if stopping.is_set() else EXIT_OK


class JobLoop:
    """Acquire and run jobs until walltime, max-jobs, idleness or a signal ends the pilot.

    Each job runs on a thread of its own while the slot has room for more: the
    loop asks the dispatcher for one job fitting what is free, starts it, and
    asks again at once; when nothing fits it waits for a job to end, and when
    the queue is empty it polls with a growing back-off. Idleness counts only
    while no job runs.
    """

    def __init__(
        self,
        args: argparse.Namespace,
        server: HarvesterLink,
        runner: JobRunner,
        ledger: SlotLedger,
        heartbeat: Heartbeat,
        pilot_id: str,
        hostname: str,
    ) -> None:
        self.args, self.server, self.runner, self.ledger = args, server, runner, ledger
        self.heartbeat, self.pilot_id, self.hostname = heartbeat, pilot_id, hostname
        self.ended = threading.Event()
        """Set whenever a job ends: room in the slot, or the pilot may be idle."""
        self.threads: list[threading.Thread] = []
        self.started = 0

    def run(self, stopping: threading.Event) -> int:
        args = self.args
        began = time.monotonic()
        idle_since = time.monotonic()
        backoff = PollBackoff(first=args.poll, cap=max(args.poll, args.poll_max))
        while not stopping.is_set():
            self._reap()
            if args.max_jobs and self.started >= args.max_jobs:
                break
            left = args.walltime - (time.monotonic() - began)
            if left < WALLTIME_MARGIN_S:
                log.info("%.0fs of walltime left: no new job", left)
                break
            if self.ledger.running():
                idle_since = time.monotonic()
            free = self.ledger.free()
            if free is None:  # the slot is full: wait for a job to end
                self.ended.wait(1.0)
                self.ended.clear()
                continue
            # the wait if nothing comes; the server holds the acquire for part of it and
            # answers as soon as a job is activated (long poll)
            wait = backoff.next_wait()
            if not self.ledger.running():  # one last poll right at max-idle, not past it
                wait = max(0.0, min(wait, args.max_idle - (time.monotonic() - idle_since) + 0.05))
            asked = time.monotonic()
            jobs = self._acquire(free, wait_s=min(wait, LONG_POLL_S) if args.long_poll else 0.0)
            if jobs is None:
                break
            if jobs:
                backoff.reset()
                for job in jobs:
                    self._start(job, left)
                idle_since = time.monotonic()
                continue
            idle = time.monotonic() - idle_since
            if not self.ledger.running() and idle > args.max_idle:
                log.info("no job for %.0fs: exiting", args.max_idle)
                break
            self.ended.wait(max(0.0, wait - (time.monotonic() - asked)))
            self.ended.clear()
        for thread in self.threads:  # the jobs running when the loop ended finish
            thread.join()
        self._reap()
        return self.started

    def _acquire(self, free: Free, wait_s: float) -> list[JobSpec | UnreadableJob] | None:
        """Jobs that fit ``free`` (at most one: it takes its share before the next ask);
        ``None`` when the server refused the pilot."""
        try:
            return self.server.acquire_jobs(
                {
                    "queue": self.args.queue,
                    "pilot_id": self.pilot_id,
                    "n_jobs": 1,
                    "worker_id": self.args.worker_id,
                    "node": self.hostname,
                    "cores": free.cores,
                    "memory_mb": free.memory_mb,
                    "gpus": free.gpus,
                    "nodes": self.args.nodes,
                    "wait_s": round(wait_s, 3),
                }
            )
        except ServerError as exc:
            if exc.status_code is not None:
                log.error("acquire refused: %s", exc)
                return None
            log.warning("acquire failed: %s", exc)
            return []

    def _start(self, job: JobSpec | UnreadableJob, left: float) -> None:
        if isinstance(job, UnreadableJob):
            if self.runner.refuse(job) is not None:
                self.started += 1
            return
        gpus = self.ledger.take(job)
        self.started += 1
        thread = threading.Thread(
            target=self._run_job, args=(job, gpus, left), name=f"job-{job.job_id}", daemon=True
        )
        self.threads.append(thread)
        thread.start()

    def _run_job(self, spec: JobSpec, gpus: list[Gpu], left: float) -> None:
        """Run one job within the pilot's walltime, heartbeating it while it runs."""
        try:
            if spec.walltime_s > left:
                spec = spec.model_copy(update={"walltime_s": int(left)})
            if self.args.heartbeat is None:
                self.heartbeat.interval_s = spec.heartbeat_interval_s
            self.heartbeat.add(spec.job_id)
            log.info(
                "job %s (task %s, attempt %s, %d cores, %d MiB) starting",
                spec.job_id,
                spec.task_id,
                spec.attempt_nr,
                spec.cores,
                spec.memory_mb,
            )
            outcome = self.runner.run(spec, gpus)
            log.info("job %s ended %s", spec.job_id, outcome.state)
        finally:
            self.heartbeat.discard(spec.job_id)
            self.ledger.give_back(spec.job_id)
            self.ended.set()

    def _reap(self) -> None:
        self.threads = [t for t in self.threads if t.is_alive()]


if __name__ == "__main__":
    sys.exit(main())
