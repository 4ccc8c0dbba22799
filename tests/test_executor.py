"""``hpcaf.Executor``: Python calls as jobs, on a real harvester, real pilots, real containers.

The functions below live in this test module, which the image does not have:
they travel by value (cloudpickle registers the module by value), as a
notebook's or a script's would.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import socket
import subprocess
import sys
import tarfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import hpcaf
from protocol.error_codes import PilotErrorCode
from tests.helpers import REPO, Harvester, ensure_image, wait_for

pytestmark = pytest.mark.e2e

PILOT_ENV = {"HPCAF_PILOT_MAX_IDLE_S": "20"}
"""Pilots that stay a while: consecutive batches meet the same warm worker."""


class Odd(ValueError):
    """A user's own exception class: raised remotely, rebuilt here."""


def square(x: int) -> int:
    return x * x


def fails(x: int) -> int:
    if x % 2:
        raise Odd(f"{x} is odd")
    return x


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def process_token() -> tuple[str, int]:
    """A token made once per worker process, and how many calls that process served."""
    import builtins
    import uuid

    state = builtins.__dict__.setdefault("_hpcaf_test_state", {"token": uuid.uuid4().hex, "n": 0})
    state["n"] += 1
    return state["token"], state["n"]


def big(n: int) -> bytes:
    return b"x" * n


def die() -> None:
    """Ends the worker process itself, as a segfaulting extension would."""
    os._exit(7)


@pytest.fixture(scope="module")
def pyhf_image(image_cache: Path) -> Path:
    ensure_image(image_cache, "pyhf.def", "pyhf")
    return image_cache


@pytest.fixture
def site(harvester_factory: Callable[..., Harvester], pyhf_image: Path) -> Harvester:
    return harvester_factory(**PILOT_ENV)


def executor_at(site: Harvester, user: str = "alice", **options: Any) -> hpcaf.Executor:
    """An executor of ``user`` on the test site's ANALY_LOCAL queue, the pyhf image by
    default; ``options`` are the Executor's own."""
    options.setdefault("containerImage", "pyhf")
    return hpcaf.Executor(site="ANALY_LOCAL", url=site.url, token=site.tokens[user], **options)


@pytest.fixture
def executor(site: Harvester) -> Iterator[hpcaf.Executor]:
    with executor_at(site) as ex:
        yield ex


def test_results_exceptions_order_and_completion(executor: hpcaf.Executor, site: Harvester) -> None:
    assert list(executor.map(square, range(12), chunksize=3)) == [x * x for x in range(12)]

    futures = [executor.submit(fails, x) for x in range(6)]
    done, _ = concurrent.futures.wait(futures, timeout=180)
    assert len(done) == 6
    assert [f.result() for f in futures[::2]] == [0, 2, 4]
    error = futures[1].exception()
    assert isinstance(error, Odd) and str(error) == "1 is odd"
    notes = "\n".join(getattr(error, "__notes__", []))
    assert "remote traceback" in notes and "in fails" in notes and "Odd: 1 is odd" in notes

    # as_completed yields as jobs end: a short call submitted after a long one comes first
    slow = executor.submit(nap, 6.0)
    time.sleep(0.5)  # its own batch
    quick = executor.submit(nap, 0.0)
    order = list(concurrent.futures.as_completed([slow, quick], timeout=180))
    assert order == [quick, slow]

    # every call ran in one job attempt, in the warm pyfunc worker
    tasks = executor.task_ids
    jobs = [j for t in tasks for j in site.jobs(t)]
    assert jobs and all(j["attempt_nr"] == 1 and j["status"] == "finished" for j in jobs)
    log = site.api().get(f"/api/v1/jobs/{jobs[-1]['id']}/log").text
    assert "pyfunc: warm worker" in log

    # a call still at work after half a second was reported running while it ran; a short
    # one went from sent to its end in one report that carried its start, log and results
    def running_reason(future: hpcaf.CallFuture) -> str:
        (job,) = site.jobs(future.task_id)
        (reason,) = site.query(
            "SELECT reason FROM state_history WHERE entity='job' AND entity_id=:j "
            "AND to_status='running'",
            j=job["id"],
        )[0]
        return str(reason)

    assert running_reason(slow) == "reported by pilot"
    assert running_reason(quick).startswith("reported by pilot with its end (started ")


def test_warm_workers_are_kept_per_user(site: Harvester) -> None:
    tokens: dict[str, set[str]] = {}
    for user in ("alice", "bob", "alice"):
        with executor_at(site, user, calls_per_job=1) as ex:
            results = [f.result(timeout=180) for f in [ex.submit(process_token) for _ in range(4)]]
        tokens.setdefault(user, set()).update(token for token, _ in results)
        if user == "alice" and len(tokens) == 1:
            assert max(n for _, n in results) > 1, "consecutive calls reuse a warm process"
    assert tokens["alice"].isdisjoint(tokens["bob"]), "a process served two users"


def test_a_dead_worker_fails_the_future_with_the_pilots_error(site: Harvester) -> None:
    with executor_at(site, max_attempt=2) as ex:
        future = ex.submit(die)
        with pytest.raises(hpcaf.JobFailed) as caught:
            future.result(timeout=180)
        assert ex.submit(square, 3).result(timeout=180) == 9, "the next call gets a new worker"
    error = caught.value
    assert error.code == PilotErrorCode.CONTAINER_FAILED
    assert "warm worker died" in (error.diagnostic or "")
    attempts = site.jobs(error.task_id)
    assert [j["attempt_nr"] for j in attempts] == [1, 2], "failed after the task's retries"


def test_cancel_kills_the_job_and_a_killed_task_cancels(site: Harvester) -> None:
    with executor_at(site) as ex:
        blocker = [ex.submit(nap, 30.0) for _ in range(2)]  # both local slots busy
        wait_for(lambda: ex.task_ids, 30, "the batch to be submitted")
        time.sleep(0.3)
        waiting = ex.submit(nap, 0.0)
        wait_for(lambda: waiting.task_id is not None, 30, "the second batch")
        assert waiting.cancel()
        with pytest.raises(concurrent.futures.CancelledError):
            waiting.result()
        jobs = site.jobs(waiting.task_id)
        wait_for(
            lambda: site.jobs(waiting.task_id)[0]["status"] == "cancelled", 30, "the job killed"
        )
        assert len(jobs) == 1

        # the owner kills the task of the running calls: their futures are cancelled
        task_id = blocker[0].task_id
        assert site.api().post(f"/api/v1/tasks/{task_id}/kill").status_code == 200
        for future in blocker:
            with pytest.raises(concurrent.futures.CancelledError):
                future.result(timeout=60)


def test_bad_input_is_refused_at_submit(site: Harvester) -> None:
    before = len(site.api().get("/api/v1/tasks").json()["items"])
    with executor_at(site, max_call_bytes=10_000, max_result_bytes=1_000) as ex:
        with socket.socket() as sock, pytest.raises(hpcaf.SerializationError, match="cannot send"):
            ex.submit(lambda: sock.fileno())
        with pytest.raises(hpcaf.SerializationError, match="generator"):
            ex.submit(square, (i for i in range(3)))
        with pytest.raises(hpcaf.PayloadTooLarge, match="over the limit of 10000 bytes"):
            ex.submit(len, b"y" * 20_000)
        assert len(site.api().get("/api/v1/tasks").json()["items"]) == before, "nothing sent"

        with pytest.raises(hpcaf.ResultTooLarge, match="over the limit of 1000 bytes"):
            ex.submit(big, 5_000).result(timeout=180)
        assert ex.submit(big, 10).result(timeout=180) == b"x" * 10

    for options, words in (
        ({"site": "NO_SUCH_QUEUE", "token": site.tokens["alice"]}, "NO_SUCH_QUEUE"),
        ({"containerImage": "nope", "token": site.tokens["alice"]}, "nope"),
        ({"token": site.tokens["pilot"]}, "pilot"),
    ):
        settings = {"site": "ANALY_LOCAL", "containerImage": "pyhf", **options}
        with hpcaf.Executor(url=site.url, **settings) as ex:  # type: ignore[arg-type]
            with pytest.raises(hpcaf.ClientError, match=words) as caught:
                ex.submit(square, 2)
            assert caught.value.status_code is not None and 400 <= caught.value.status_code < 500


def test_a_python_the_image_cannot_read_is_refused_at_submit(
    site: Harvester, image_cache: Path, tmp_path: Path
) -> None:
    """An image whose python3 is 3.9 (imported as a root-filesystem tarball: the version is
    read off its files), against this client's Python."""
    root = tmp_path / "root"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "python3.9").write_bytes(b"\x7fELF")
    (root / "usr" / "bin" / "python3").symlink_to("python3.9")
    (root / "usr/lib/python3/dist-packages/cloudpickle-2.2.1.dist-info").mkdir(parents=True)
    (root / "bin").symlink_to("usr/bin")
    tarball = tmp_path / "py39.tar"
    with tarfile.open(tarball, "w") as tar:
        tar.add(root, arcname=".")
    site.cli("harvester.cli", "image", "import", str(tarball), "--name", "fake-python39")
    client = ".".join(map(str, sys.version_info[:2]))
    assert client != "3.9"
    with (
        executor_at(site, containerImage="fake-python39") as ex,
        pytest.raises(hpcaf.ClientError) as caught,
    ):
        ex.submit(square, 2)
    message = str(caught.value)
    assert f"your Python is {client}" in message and "Python 3.9" in message
    assert "serializer='source'" in message
    # by source, any Python 3 reads the calls: accepted at submission
    with executor_at(site, containerImage="fake-python39", serializer="source") as ex:
        future = ex.submit(square, 2)
        assert future.cancel()


def test_source_serializer_runs_plain_functions(site: Harvester) -> None:
    with executor_at(site, serializer="source") as ex:
        assert ex.submit(square, 7).result(timeout=180) == 49
        with pytest.raises(hpcaf.SerializationError, match="plain functions"):
            ex.submit(lambda: 1)


SUBMITTER = textwrap.dedent(
    """
    import sys, time
    import hpcaf

    def slow_square(x):
        import time
        time.sleep(1.0)
        return x * x

    ex = hpcaf.Executor(site="ANALY_LOCAL", containerImage="pyhf", calls_per_job=1)
    futures = [ex.submit(slow_square, x) for x in range(6)]
    while not ex.task_ids:
        time.sleep(0.05)
    print(ex.task_ids[0], flush=True)
    time.sleep(3600)
    """
)


def test_futures_outlive_the_client_process(site: Harvester, tmp_path: Path) -> None:
    script = tmp_path / "submitter.py"
    script.write_text(SUBMITTER)
    env = {
        **os.environ,
        "HPCAF_URL": site.url,
        "HPCAF_TOKEN": site.tokens["alice"],
        "PYTHONPATH": str(REPO),
    }
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, env=env, cwd=tmp_path
    )
    assert proc.stdout is not None
    task_id = int(proc.stdout.readline())
    proc.send_signal(signal.SIGKILL)  # the kernel dies with its futures
    proc.wait()
    with hpcaf.Executor(url=site.url, token=site.tokens["alice"]) as ex:
        futures = ex.reload(task_id)
        assert [f.result(timeout=180) for f in futures] == [x * x for x in range(6)]
        again = ex.reload(task_id)  # the ended task: settled from what the harvester kept
        assert [f.result(timeout=30) for f in again] == [x * x for x in range(6)]
    jobs = site.jobs(task_id)
    assert len(jobs) == 6 and all(j["attempt_nr"] == 1 for j in jobs), "nothing ran twice"


@pytest.mark.database  # the endings' history query, across a restart, on both databases
def test_a_harvester_restart_in_the_middle_of_map(site: Harvester) -> None:
    with executor_at(site, calls_per_job=2) as ex:
        results = ex.map(nap, [0.4] * 24)
        wait_for(
            lambda: any(j["status"] == "finished" for t in ex.task_ids for j in site.jobs(t)),
            120,
            "a first job to end",
        )
        site.stop()
        time.sleep(2.0)
        site.start()
        values = list(results)
    assert values == [0.4] * 24
    (task_id,) = ex.task_ids
    jobs = site.jobs(task_id)
    attempts = site.api().get(f"/api/v1/tasks/{task_id}/jobs", params={"all_attempts": True})
    seen = "\n".join(
        f"job {j['id']} #{j['job_index']} attempt {j['attempt_nr']}: {j['status']} "
        f"{j.get('pilot_error_code')} {j.get('pilot_error_diag')}"
        for j in attempts.json()
    )  # what a failure below shows: every attempt, and why it ended
    final = [j for j in jobs if j["status"] in ("finished", "failed", "cancelled")]
    assert len(final) == 12 and all(j["status"] == "finished" for j in final), seen
    assert sorted(j["job_index"] for j in final) == list(range(12)), "lost or doubled:\n" + seen


def _pallets() -> Path:
    root = Path(os.environ.get("HPCAF_PALLETS") or REPO.parent / "shared" / "data" / "pallets")
    if not (root / "staus" / "Region-combined").is_dir():
        pytest.fail(f"pallets not found under {root}: set HPCAF_PALLETS")
    return root


def test_the_notebook_runs_the_seed_functions(
    site: Harvester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/examples/executor.ipynb on a real Jupyter kernel; its CLs against pyhf run here."""
    import gzip
    import json

    import nbclient
    import nbformat
    import pyhf

    pallets = _pallets()
    for name, value in {
        "HPCAF_URL": site.url,
        "HPCAF_TOKEN": site.tokens["alice"],
        "HPCAF_PALLETS": str(pallets),
        "HPCAF_SITE": "ANALY_LOCAL",
        "HPCAF_EXAMPLE_PATCHES": "3",
        "PYTHONPATH": str(REPO),
    }.items():
        monkeypatch.setenv(name, value)
    notebook = nbformat.read(REPO / "docs" / "examples" / "executor.ipynb", as_version=4)
    nbclient.NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()
    table = "".join(
        out.get("text", "") for out in notebook.cells[4].outputs if out.output_type == "stream"
    )
    rows = [line.split() for line in table.splitlines()[1:]]
    assert len(rows) == 3

    folder = pallets / "staus" / "Region-combined"
    workspace = pyhf.Workspace(json.loads((folder / "BkgOnly.json").read_text()))
    patches = json.loads(gzip.decompress((folder / "patchset.json.gz").read_bytes()))["patches"]
    pyhf.set_backend("numpy")
    for row, patch in zip(rows, patches[:3], strict=True):
        model = workspace.model(
            patches=[patch["patch"]],
            modifier_settings={
                "normsys": {"interpcode": "code4"},
                "histosys": {"interpcode": "code4p"},
            },
        )
        expected = float(pyhf.infer.hypotest(1.0, workspace.data(model), model, test_stat="qtilde"))
        assert row[0] == patch["metadata"]["name"]
        assert abs(float(row[1]) - expected) < 5e-6, (row, expected)
