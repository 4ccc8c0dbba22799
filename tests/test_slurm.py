"""Workers on the real Slurm dev cluster (scripts/slurm-cluster), end to end."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from protocol.states import WorkerStatus
from tests.helpers import Harvester, wait_for

pytestmark = pytest.mark.e2e


def slurm(conf: Path, *args: str) -> str:
    return subprocess.run(
        list(args),
        env={**os.environ, "SLURM_CONF": str(conf)},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout


def queue(
    name: str,
    conf: Path,
    *,
    max_workers: int = 2,
    partition: str = "debug",
    extra: str = "",
    options: str = "",
) -> str:
    return f"""
[queues.{name}]
provider = "slurm"
cores = 1
memory_mb = 500
maxWalltime = 600
maxWorkers = {max_workers}
nQueueLimitWorker = {max_workers}
maxNewWorkersPerCycle = {max_workers}
{extra}
[queues.{name}.provider_options]
partition = "{partition}"
slurm_conf = "{conf}"
polling_interval_s = 1
{options}
"""


def assert_completed(conf: Path, batch_ids: list[str]) -> None:
    """Each batch job ended COMPLETED in the job completion log (``sacct -c``)."""
    accounted = slurm(conf, "sacct", "-c", "-n", "-P", "-o", "JobID,State")
    states = dict(line.split("|")[:2] for line in accounted.splitlines() if "|" in line)
    for batch_id in batch_ids:
        assert states.get(batch_id) == "COMPLETED", (batch_id, states.get(batch_id))


def clear_cluster(conf: Path) -> None:
    """Cancel every job on the dev cluster and wait until it is empty: a test's pilots must
    not outlive it and hold the two CPUs the next test needs."""
    slurm(conf, "scancel", "--user", pwd.getpwuid(os.getuid()).pw_name)
    wait_for(lambda: not slurm(conf, "squeue", "-h", "-o", "%i").strip(), 60, "an empty cluster")


@pytest.fixture
def slurm_harvester(
    harvester_factory: Callable[..., Harvester], slurm_conf: Path
) -> Iterator[Callable[[str], Harvester]]:
    def start(config: str) -> Harvester:
        return harvester_factory(config, SLURM_CONF=str(slurm_conf))

    yield start
    clear_cluster(slurm_conf)


def test_task_on_slurm_workers(
    slurm_harvester: Callable[[str], Harvester], slurm_conf: Path
) -> None:
    h = slurm_harvester(queue("ANALY_SLURM", slurm_conf))
    task_id = h.submit(
        "--containerImage",
        "base",
        "--exec",
        "sleep 1; echo $PANDAID > o.txt",
        "--outputs",
        "o.txt",
        "--outDS",
        "user.alice.slurm",
        "--nJobs",
        "6",
        "--site",
        "ANALY_SLURM",
    )
    seen_in_squeue: set[str] = set()

    def ended() -> bool:
        out = slurm(slurm_conf, "squeue", "-h", "-o", "%i %j")
        seen_in_squeue.update(
            line.split()[0] for line in out.splitlines() if "hpcaf-ANALY_SLURM" in line
        )
        return h.task(task_id)["status"] in ("done", "finished", "failed")

    wait_for(ended, 240, "the task to end", interval=0.5)
    assert h.task(task_id)["status"] == "done"
    jobs = h.jobs(task_id)
    assert len(jobs) == 6 and {j["status"] for j in jobs} == {"finished"}
    batch_ids = {j["batch_id"] for j in jobs}
    assert all(b and b.isdigit() for b in batch_ids)
    workers = h.query("SELECT batch_id, status FROM workers")
    assert len(workers) >= 2, "maxWorkers = 2 slots were used"
    assert seen_in_squeue, "squeue listed the pilot jobs while they ran"
    wait_for(
        lambda: all(s == "finished" for _, s in h.query("SELECT batch_id, status FROM workers")),
        60,
        "workers to end",
    )
    assert_completed(slurm_conf, [b for b, _ in h.query("SELECT batch_id, status FROM workers")])


def test_a_task_on_parsl_slurm_provider_workers(
    slurm_harvester: Callable[[str], Harvester], slurm_conf: Path
) -> None:
    """provider = "parsl" with Parsl's own SlurmProvider against the dev cluster: Parsl
    writes and sbatches the script, polls squeue/sacct, and hpcaf maps its states."""
    config = """
[queues.ANALY_PARSL_SLURM]
provider = "parsl"
cores = 1
memory_mb = 500
maxWalltime = 600
maxWorkers = 2
nQueueLimitWorker = 2
maxNewWorkersPerCycle = 2

[queues.ANALY_PARSL_SLURM.provider_options]
provider = "SlurmProvider"
launcher = "SingleNodeLauncher"
polling_interval_s = 1
options = { partition = "debug", exclusive = false }
"""
    h = slurm_harvester(config)
    task_id = h.submit(
        "--containerImage",
        "base",
        "--exec",
        "echo $PANDAID > o.txt",
        "--outputs",
        "o.txt",
        "--outDS",
        "user.alice.parslslurm",
        "--nJobs",
        "3",
        "--site",
        "ANALY_PARSL_SLURM",
    )
    assert h.wait_task(task_id, 240)["status"] == "done"
    jobs = h.jobs(task_id)
    assert {j["status"] for j in jobs} == {"finished"}
    workers = h.query("SELECT batch_id, status FROM workers")
    scripts = [
        p
        for p in h.home.rglob("hpcaf-ANALY_PARSL_SLURM-*")
        if p.suffix not in (".stdout", ".stderr")
    ]
    assert scripts and "#SBATCH --partition=debug" in scripts[0].read_text(), "Parsl's script"
    wait_for(
        lambda: all(s == "finished" for _, s in h.query("SELECT batch_id, status FROM workers")),
        90,
        "the workers to end",
    )
    assert_completed(slurm_conf, [b for b, _ in workers])


def test_scancel_of_a_running_pilot(
    slurm_harvester: Callable[[str], Harvester], slurm_conf: Path
) -> None:
    h = slurm_harvester(queue("ANALY_SLURM", slurm_conf))
    task_id = h.submit(
        "--containerImage",
        "base",
        "--exec",
        "sleep 6",
        "--outDS",
        "user.alice.scancel",
        "--nJobs",
        "3",
        "--site",
        "ANALY_SLURM",
    )
    running = wait_for(
        lambda: [j for j in h.jobs(task_id) if j["status"] == "running"], 120, "a running job"
    )
    victim = running[0]
    slurm(slurm_conf, "scancel", victim["batch_id"])
    assert h.wait_task(task_id, 240)["status"] == "done"
    jobs = h.jobs(task_id)
    finished = Counter(j["job_index"] for j in jobs if j["status"] == "finished")
    assert finished == {0: 1, 1: 1, 2: 1}, "every job ran exactly once to finished"
    first = next(j for j in jobs if j["id"] == victim["id"])
    assert first["status"] == "closed"
    assert first["pilot_error_code"] in (1145, 1101, 1100), first
    worker_status = h.query("SELECT status FROM workers WHERE id=:w", w=victim["worker_id"])[0][0]
    assert worker_status in ("cancelled", "missed", "failed")
    retry = next(
        j for j in jobs if j["job_index"] == victim["job_index"] and j["status"] == "finished"
    )
    assert retry["worker_id"] != victim["worker_id"]


def test_failing_pilot_marks_worker_failed(
    slurm_harvester: Callable[[str], Harvester], slurm_conf: Path
) -> None:
    h = slurm_harvester(
        queue(
            "ANALY_SLURM_BAD",
            slurm_conf,
            max_workers=1,
            extra='pilot_options = ["--max-jobs", "not-a-number"]',
        )
    )
    task_id = h.submit(
        "--containerImage",
        "base",
        "--exec",
        "true",
        "--outDS",
        "user.alice.badpilot",
        "--site",
        "ANALY_SLURM_BAD",
    )
    failed = wait_for(
        lambda: h.query("SELECT diagnostics FROM workers WHERE status='failed'"),
        120,
        "a failed worker",
    )
    assert "exit code 2" in failed[0][0]
    h.pbook("kill", str(task_id))


def test_offline_queue_gets_no_workers(
    slurm_harvester: Callable[[str], Harvester], slurm_conf: Path
) -> None:
    h = slurm_harvester(queue("ANALY_SLURM", slurm_conf))
    with h.api("admin") as c:
        assert c.patch("/api/v1/queues/ANALY_SLURM", json={"status": "offline"}).status_code == 200
    task_id = h.submit(
        "--containerImage",
        "base",
        "--exec",
        "true",
        "--outDS",
        "user.alice.offline",
        "--site",
        "ANALY_SLURM",
    )
    h.wait_activated(task_id, 1)
    time.sleep(3)
    assert h.query("SELECT count(*) FROM workers")[0][0] == 0
    with h.api("admin") as c:
        c.patch("/api/v1/queues/ANALY_SLURM", json={"status": "online"})
    assert h.wait_task(task_id, 120)["status"] == "done"


def test_invalid_partition_fails_with_sbatch_message_and_backs_off(
    slurm_harvester: Callable[[str], Harvester], slurm_conf: Path
) -> None:
    h = slurm_harvester(queue("ANALY_SLURM_NOPART", slurm_conf, partition="nosuchpartition"))
    task_id = h.submit(
        "--containerImage",
        "base",
        "--exec",
        "true",
        "--outDS",
        "user.alice.nopart",
        "--site",
        "ANALY_SLURM_NOPART",
    )
    failed = wait_for(
        lambda: h.query("SELECT diagnostics FROM workers WHERE status='failed'"),
        60,
        "a failed submission",
    )
    assert "invalid partition" in failed[0][0].lower()
    time.sleep(7)
    attempts = h.query("SELECT count(*) FROM workers")[0][0]
    assert 1 <= attempts <= 4, f"{attempts} submissions in ~8 s: back-off not applied"
    assert h.task(task_id)["status"] in ("ready", "running")
    h.pbook("kill", str(task_id))


def test_hanging_batch_command_times_out(
    slurm_harvester: Callable[[str], Harvester], slurm_conf: Path, tmp_path: Path
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("sbatch", "scancel", "sacct"):
        (bin_dir / name).symlink_to(
            subprocess.run(["which", name], capture_output=True, text=True).stdout.strip()
        )
    for name in ("squeue", "scontrol"):
        (bin_dir / name).write_text("#!/bin/sh\nsleep 30\n")
        (bin_dir / name).chmod(0o755)
    h = slurm_harvester(
        queue(
            "ANALY_SLURM_HANG",
            slurm_conf,
            max_workers=1,
            options=f'bin_dir = "{bin_dir}"\ncommand_timeout_s = 1',
        )
    )
    task_id = h.submit(
        "--containerImage",
        "base",
        "--exec",
        "true",
        "--outDS",
        "user.alice.hang",
        "--site",
        "ANALY_SLURM_HANG",
    )
    wait_for(lambda: "timed out after 1s" in h.log_text(), 60, "a timed-out status query")
    start = time.monotonic()
    response = httpx.get(
        h.url + "/api/v1/queues",
        headers={"Authorization": f"Bearer {h.tokens['alice']}"},
        timeout=5,
    )
    assert response.status_code == 200 and time.monotonic() - start < 2
    h.pbook("kill", str(task_id))


def test_queue_larger_than_any_node_is_refused(slurm_conf: Path, tmp_path: Path) -> None:
    config = tmp_path / "harvester.toml"
    config.write_text(queue("ANALY_SLURM_HUGE", slurm_conf).replace("cores = 1", "cores = 512"))
    env = {**os.environ, "HPCAF_HOME": str(tmp_path), "SLURM_CONF": str(slurm_conf)}
    result = subprocess.run(
        [sys.executable, "-m", "harvester.cli", "queue", "list", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "queue ANALY_SLURM_HUGE: field cores: 512 cores per slot" in result.stderr


def test_without_accounting_storage_the_completion_log_is_read(
    slurm_conf: Path, tmp_path: Path
) -> None:
    """The dev cluster keeps no accounting database, only a job completion log: plain sacct
    refuses ("accounting storage is disabled"), and the provider reads ``sacct -c`` instead
    (called here directly: it is the path a job takes once slurmctld has forgotten it)."""
    from harvester.providers.base import WorkerResources
    from harvester.providers.slurm import SlurmOptions, SlurmProvider

    plain = subprocess.run(
        ["sacct", "-n", "-j", "1"],
        env={**os.environ, "SLURM_CONF": str(slurm_conf)},
        capture_output=True,
        text=True,
    )
    assert "accounting storage is disabled" in (plain.stdout + plain.stderr).lower()
    clear_cluster(slurm_conf)
    provider = SlurmProvider(SlurmOptions(partition="debug", slurm_conf=str(slurm_conf)))
    batch_id = provider.submit(
        "exit 4", WorkerResources(cores=1, memory_mb=100, walltime_s=120), "hpcaf-jc", tmp_path
    )
    wait_for(
        lambda: batch_id not in slurm(slurm_conf, "squeue", "-h", "-o", "%i"), 60, "the job to end"
    )
    ended = wait_for(lambda: provider._sacct(batch_id), 30, "the completion log to list it")
    assert ended.status is WorkerStatus.FAILED and ended.exit_code == 4, ended
    assert provider._no_accounting, "learnt once, so later polls go straight to sacct -c"
