"""End to end on the embedded defaults: real harvester, real pilots, real bubblewrap.

Every test drives pcontainer/pbook (or pilots) as separate processes over HTTP.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers import Harvester, wait_for

pytestmark = pytest.mark.e2e


def test_hello_world_with_output(harvester: Harvester, tmp_path: Path) -> None:
    task_id = harvester.submit(
        "--containerImage",
        "base",
        "--exec",
        "echo Hello World > hello.txt",
        "--outputs",
        "hello.txt",
        "--outDS",
        "user.alice.test",
    )
    waited = harvester.pbook("wait", str(task_id), "--timeout", "120")
    assert waited.returncode == 0, waited.output
    assert f"task {task_id} done" in waited.stdout

    outdir = tmp_path / "out"
    results = harvester.pbook("results", str(task_id), "-o", str(outdir))
    assert results.returncode == 0, results.output
    files = list(outdir.iterdir())
    assert [f.name for f in files] == [f"user.alice.test.{task_id}._000001.hello.txt"]
    assert files[0].read_text() == "Hello World\n"

    job = harvester.jobs(task_id)[0]
    assert job["status"] == "finished" and job["exit_code"] == 0
    assert job["worker_id"] is not None and job["batch_id"], "the job says which worker ran it"
    log = harvester.pbook("logs", str(job["id"]))
    assert "echo Hello World > hello.txt" in log.stdout
    assert "exit code 0" in log.stdout
    history = [
        r[0]
        for r in harvester.query(
            "SELECT to_status FROM state_history WHERE entity='job' AND entity_id=:i ORDER BY id",
            i=job["id"],
        )
    ]
    assert history == ["defined", "activated", "sent", "starting", "running", "finished"]


def test_four_jobs_on_two_workers(harvester: Harvester) -> None:
    task_id = harvester.submit(
        "--containerImage",
        "base",
        "--exec",
        "sleep 1; echo $HPCAF_JOB_INDEX > idx.txt",
        "--outputs",
        "idx.txt",
        "--outDS",
        "user.alice.four",
        "--nJobs",
        "4",
    )
    peak = 0
    deadline = time.monotonic() + 120
    while harvester.task(task_id)["status"] not in ("done", "finished", "failed"):
        running = harvester.query(
            "SELECT count(*) FROM workers WHERE status IN ('submitted','running')"
        )[0][0]
        peak = max(peak, running)
        assert time.monotonic() < deadline, "task did not end"
        time.sleep(0.2)
    task = harvester.task(task_id)
    assert task["status"] == "done"
    jobs = harvester.jobs(task_id)
    assert sorted(j["job_index"] for j in jobs) == [0, 1, 2, 3]
    assert {j["status"] for j in jobs} == {"finished"}
    assert peak <= 2, f"maxWorkers=2 but {peak} workers were active at once"
    assert len({j["worker_id"] for j in jobs}) >= 2, "both worker slots were used"
    results = harvester.pbook("results", str(task_id), "--json")
    names = sorted(f["name"] for f in __import__("json").loads(results.stdout)["files"])
    assert names == [f"user.alice.four.{task_id}._00000{i}.idx.txt" for i in range(1, 5)]


def test_failing_exec_is_retried_then_failed(harvester: Harvester) -> None:
    task_id = harvester.submit(
        "--containerImage",
        "base",
        "--exec",
        "echo broken >&2; exit 7",
        "--outDS",
        "user.alice.fail",
        "--maxAttempt",
        "3",
    )
    waited = harvester.pbook("wait", str(task_id), "--timeout", "120")
    assert waited.returncode == 1
    assert "failed" in waited.stdout
    jobs = harvester.jobs(task_id)
    assert [(j["attempt_nr"], j["status"]) for j in jobs] == [
        (1, "closed"),
        (2, "closed"),
        (3, "failed"),
    ]
    assert all(j["exit_code"] == 7 and j["pilot_error_code"] == 1305 for j in jobs)
    log = harvester.pbook("logs", str(jobs[-1]["id"]))
    assert "broken" in log.stdout, "stderr of the payload is kept in the log"


@pytest.mark.database
def test_kill_running_task(harvester: Harvester) -> None:
    task_id = harvester.submit(
        "--containerImage",
        "base",
        "--exec",
        "sleep 300",
        "--outDS",
        "user.alice.kill",
    )
    wait_for(lambda: harvester.job_status(task_id) == "running", 60, "the job to run")
    other = harvester.pbook("kill", str(task_id), user="bob")
    assert other.returncode != 0 and "belongs to alice" in other.output
    killed = harvester.pbook("kill", str(task_id))
    assert killed.returncode == 0, killed.output
    assert harvester.task(task_id)["status"] == "aborted"
    job = harvester.jobs(task_id)[0]
    assert job["status"] == "cancelled"
    # the pilot hears "tobekilled" on its next heartbeat and stops the payload;
    # its worker then ends long before the 300 s sleep would have
    wait_for(
        lambda: (
            harvester.query("SELECT status FROM workers WHERE id=:w", w=job["worker_id"])[0][0]
            in ("finished", "failed")
        ),
        60,
        "the pilot to stop the payload and exit",
    )
    assert harvester.jobs(task_id)[0]["status"] == "cancelled", "a killed job stays cancelled"
    again = harvester.pbook("kill", str(task_id))
    assert again.returncode != 0 and "already ended" in again.output


def test_payload_isolation(harvester: Harvester, tmp_path: Path) -> None:
    secret = tmp_path / "host-secret.txt"
    secret.write_text("do not read me")
    port = harvester.url.rsplit(":", 1)[1]
    probe = (
        "python3 - <<'EOF'\n"
        "import socket, os\n"
        "r = {}\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=2); r['net'] = 'open'\n"
        "except OSError as e:\n"
        "    r['net'] = 'blocked'\n"
        f"r['host_file'] = os.path.exists({str(secret)!r})\n"
        "try:\n"
        "    open('/usr/bin/hpcaf-probe', 'w'); r['image'] = 'writable'\n"
        "except OSError:\n"
        "    r['image'] = 'read-only'\n"
        "open('probe.txt', 'w').write(repr(sorted(r.items())))\n"
        "EOF"
    )
    task_id = harvester.submit(
        "--containerImage",
        "base",
        "--exec",
        probe,
        "--outputs",
        "probe.txt",
        "--outDS",
        "user.alice.probe",
    )
    assert harvester.wait_task(task_id)["status"] == "done"
    outdir = tmp_path / "o"
    harvester.pbook("results", str(task_id), "-o", str(outdir))
    report = next(outdir.iterdir()).read_text()
    assert report == repr(
        sorted({"net": "blocked", "host_file": False, "image": "read-only"}.items())
    )


@pytest.mark.database
def test_killed_pilot_job_retried_after_heartbeat_timeout(harvester: Harvester) -> None:
    task_id = harvester.submit(
        "--containerImage",
        "base",
        "--exec",
        "sleep 4; echo ok > ok.txt",
        "--outputs",
        "ok.txt",
        "--outDS",
        "user.alice.sigkill",
        "--site",
        "ANALY_MANUAL",
    )
    harvester.wait_activated(task_id, 1)
    first = harvester.start_pilot("ANALY_MANUAL")
    wait_for(lambda: harvester.job_status(task_id) == "running", 60, "the job to run")
    first.send_signal(signal.SIGKILL)
    first.wait()
    # no pilot heartbeats any more: the watchdog (timeout 6 s in tests) fails the attempt
    wait_for(lambda: len(harvester.jobs(task_id)) == 2, 60, "a second attempt")
    lost = harvester.jobs(task_id)[0]
    assert lost["status"] == "closed"
    assert lost["pilot_error_code"] == 1100 and "no heartbeat" in lost["pilot_error_diag"]
    harvester.start_pilot("ANALY_MANUAL")
    assert harvester.wait_task(task_id, 90)["status"] == "done"
    attempts = harvester.jobs(task_id)
    assert [(j["attempt_nr"], j["status"]) for j in attempts] == [(1, "closed"), (2, "finished")]


def test_two_pilots_racing_never_share_a_job(harvester: Harvester) -> None:
    task_id = harvester.submit(
        "--containerImage",
        "base",
        "--exec",
        "echo $PANDAID > id.txt",
        "--outputs",
        "id.txt",
        "--outDS",
        "user.alice.race",
        "--site",
        "ANALY_MANUAL",
        "--nJobs",
        "24",
    )
    harvester.wait_activated(task_id, 24)
    pilots = [harvester.start_pilot("ANALY_MANUAL") for _ in range(2)]
    assert harvester.wait_task(task_id, 180)["status"] == "done"
    for p in pilots:
        p.wait(timeout=30)
    sent = Counter(
        r[0]
        for r in harvester.query(
            "SELECT entity_id FROM state_history WHERE entity='job' AND to_status='sent'"
        )
    )
    assert len(sent) == 24 and set(sent.values()) == {1}, "each job dispatched exactly once"
    jobs = harvester.jobs(task_id)
    assert len(jobs) == 24 and {j["status"] for j in jobs} == {"finished"}
    assert len({j["pilot_id"] for j in jobs}) == 2, "both pilots got work"


def test_pilot_sigterm_reports_and_job_is_retried(harvester: Harvester) -> None:
    task_id = harvester.submit(
        "--containerImage",
        "base",
        "--exec",
        "sleep 3; echo ok > ok.txt",
        "--outputs",
        "ok.txt",
        "--outDS",
        "user.alice.sigterm",
        "--site",
        "ANALY_MANUAL",
    )
    harvester.wait_activated(task_id, 1)
    first = harvester.start_pilot("ANALY_MANUAL")
    wait_for(lambda: harvester.job_status(task_id) == "running", 60, "the job to run")
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=30) == 143, "the pilot exits on its own after SIGTERM"
    stopped = harvester.jobs(task_id)[0]
    assert stopped["status"] == "closed"
    assert stopped["pilot_error_code"] == 1145 and "SIGTERM" in stopped["pilot_error_diag"]
    harvester.start_pilot("ANALY_MANUAL")
    assert harvester.wait_task(task_id, 90)["status"] == "done"


def test_sweeper_removes_worker_leftovers(harvester_factory) -> None:  # type: ignore[no-untyped-def]
    h = harvester_factory(None, HPCAF_SWEEP_AFTER_S="1")
    task_id = h.submit("--containerImage", "base", "--exec", "true", "--outDS", "user.alice.sweep")
    assert h.wait_task(task_id)["status"] == "done"
    wait_for(
        lambda: (
            h.query("SELECT count(*) FROM workers WHERE status IN ('submitted', 'running')")[0][0]
            == 0
        ),
        60,
        "every worker to end",
    )
    workdirs = [w for (w,) in h.query("SELECT workdir FROM workers")]
    assert workdirs and all(w for w in workdirs)
    wait_for(
        lambda: h.query("SELECT count(*) FROM workers WHERE swept_at IS NULL")[0][0] == 0,
        30,
        "the sweeper to sweep every ended worker",
    )
    assert not any(Path(w).exists() for w in workdirs), "worker directories are removed"


def test_harvester_killed_and_restarted_mid_task(harvester: Harvester) -> None:
    """SIGKILL the service while pilots run; a restart finishes the task, each job once."""
    task_id = harvester.submit(
        "--containerImage",
        "base",
        "--exec",
        "sleep 2; echo $HPCAF_JOB_INDEX > i.txt",
        "--outputs",
        "i.txt",
        "--outDS",
        "user.alice.restart",
        "--nJobs",
        "6",
    )
    wait_for(
        lambda: harvester.task(task_id)["job_counts"].get("finished", 0) >= 1,
        120,
        "the first finished job",
    )
    harvester.stop(signal.SIGKILL)
    time.sleep(3)  # pilots keep running; their calls fail and are retried
    harvester.start()
    assert harvester.wait_task(task_id, 180)["status"] == "done"
    finished = Counter(j["job_index"] for j in harvester.jobs(task_id) if j["status"] == "finished")
    assert finished == {i: 1 for i in range(6)}, "every job finished exactly once"
    names = {r[0] for r in harvester.query("SELECT name FROM files WHERE kind='output'")}
    assert len(names) == 6


def _processes() -> dict[int, tuple[int, str]]:
    """pid → (process group, command line) of every live process."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] not in ("Z", "X"):
            found[int(entry.name)] = (int(fields[2]), cmdline)
    return found


def test_a_stopped_harvester_stops_the_local_pilots_it_started(harvester: Harvester) -> None:
    """SIGTERM the harvester while its local pilots run payloads: the pilots, their
    containers and payloads are gone soon after, not left polling an address nobody
    answers."""
    marker = "377.25"  # a payload no other test runs, to find it among the processes
    harvester.submit(
        "--containerImage", "base", "--exec", f"sleep {marker}", "--outDS", "user.alice.stop",
        "--nJobs", "2",
    )  # fmt: skip

    def payloads() -> int:
        return sum(cmd.startswith(f"sleep {marker}") for _, cmd in _processes().values())

    wait_for(lambda: payloads() == 2, 120, "both payloads running")
    pilots = {int(b) for (b,) in harvester.query("SELECT batch_id FROM workers")}
    before = _processes()
    assert pilots & set(before), "the pilots are live processes"

    harvester.stop()

    def gone() -> bool:
        now = _processes()
        return not any(
            group in pilots or f"sleep {marker}" in cmd for group, cmd in now.values()
        ) and not (pilots & set(now))

    wait_for(gone, 30, "the pilots and their payloads to end")


def test_an_input_shared_by_jobs_is_fetched_once_per_pilot_and_copied(
    harvester: Harvester,
) -> None:
    """The pilot's input cache against the plain way: every job sees the input as uploaded,
    though each job before it on the same pilot changed its own copy in place."""
    import hashlib

    import hpcaf

    content = b"the input, as uploaded\n" * 100
    with hpcaf.Client(harvester.url, harvester.tokens["alice"]) as client:
        sha = client.http.upload_bytes(content, "in.txt")["sha256"]
        task = client.submit_container(
            containerImage="base",
            exec="sha256sum in.txt > seen.txt; echo changed by $HPCAF_JOB_INDEX >> in.txt",
            inputs=[{"name": "in.txt", "sha256": sha}],
            outputs=["seen.txt"],
            nJobs=4,
        )
        task.wait(timeout=180, check=True)
        jobs = task.jobs()
        folder = harvester.home / "seen"
        paths = task.results(dest=folder).paths
    assert len({job.worker_id for job in jobs}) < len(jobs), "a pilot ran two of the jobs"
    assert len(paths) == 4
    for path in paths:
        assert path.read_text().split()[0] == hashlib.sha256(content).hexdigest(), path
