"""Whole-node pilots: several jobs at once in one slot, packed by cores and memory."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from db.models import QueueStatus
from harvester.agents.adjuster import QueueLoad, new_workers
from harvester.config import QueueConfig
from pilot.execution import ContainerPayload
from pilot.slots import SlotLedger
from pilot.supervision import Exited, Supervisor
from pilot.warm import WarmPool
from protocol.error_codes import PilotErrorCode
from protocol.pilot import JobSpec
from tests.helpers import Harvester, harvester_settings


def _spec(job_id: int, cores: int, memory_mb: int, gpus: int = 0) -> JobSpec:
    return JobSpec.model_validate(
        {
            "job_id": job_id, "task_id": 1, "job_index": 0, "attempt_nr": 1, "owner": "alice",
            "out_ds": "user.alice.x", "image": "base", "transform": "runcontainer",
            "exec": "true", "cores": cores, "memory_mb": memory_mb, "walltime_s": 60,
            "gpus": gpus,
        }
    )  # fmt: skip


def test_the_ledger_offers_what_is_free_and_takes_it_back() -> None:
    ledger = SlotLedger(4, 8000, [])
    assert ledger.free() is not None and ledger.free().cores == 4  # type: ignore[union-attr]
    ledger.take(_spec(1, 1, 2000))
    ledger.take(_spec(2, 2, 5000))
    free = ledger.free()
    assert free is not None and (free.cores, free.memory_mb) == (1, 1000)
    ledger.take(_spec(3, 1, 1000))
    assert ledger.free() is None, "no core and no memory left"
    ledger.give_back(2)
    free = ledger.free()
    assert free is not None and (free.cores, free.memory_mb) == (2, 5000)


def test_a_slot_of_unknown_memory_packs_by_cores() -> None:
    ledger = SlotLedger(2, 0, [])
    ledger.take(_spec(1, 1, 4000))
    free = ledger.free()
    assert free is not None and (free.cores, free.memory_mb) == (1, None)


def test_without_packing_one_job_at_a_time() -> None:
    ledger = SlotLedger(4, 8000, [], pack=False)
    ledger.take(_spec(1, 1, 1000))
    assert ledger.free() is None
    ledger.give_back(1)
    assert ledger.free() is not None


def test_gpus_are_given_to_one_job_each() -> None:
    from pilot.gpus import Gpu

    gpus = [
        Gpu(index=str(i), name="A100", memory_mb=40000, driver="550.54", uuid=f"GPU-{i}")
        for i in range(2)
    ]
    ledger = SlotLedger(4, 8000, gpus)
    first = ledger.take(_spec(1, 1, 1000, gpus=1))
    second = ledger.take(_spec(2, 1, 1000, gpus=1))
    assert [g.uuid for g in first] == ["GPU-0"] and [g.uuid for g in second] == ["GPU-1"]
    assert ledger.free().gpus == 0  # type: ignore[union-attr]
    ledger.give_back(1)
    assert [g.uuid for g in ledger.take(_spec(3, 1, 1000, gpus=1))] == ["GPU-0"]


def test_a_kill_stops_only_its_job_and_a_signal_stops_all() -> None:
    supervisor = Supervisor()
    ended: dict[int, object] = {}
    inside = threading.Barrier(4)

    def run(job_id: int) -> None:
        with supervisor.job(job_id):
            inside.wait()
            process = subprocess.Popen(["sleep", "30"], start_new_session=True)
            ended[job_id] = supervisor.supervise(ContainerPayload(process), 60, lambda: None)

    threads = [threading.Thread(target=run, args=(i,)) for i in (1, 2, 3)]
    for thread in threads:
        thread.start()
    inside.wait()  # all three are inside job(): a kill now is kept, started or not
    supervisor.kill(2, PilotErrorCode.KILLED, "killed on the server's command")
    threads[1].join(10)
    assert 2 in ended and 1 not in ended and 3 not in ended, "only job 2 ended"
    supervisor.kill(None, PilotErrorCode.PILOT_SIGNALLED, "pilot received SIGTERM")
    for thread in threads:
        thread.join(10)
    codes = {k: getattr(v, "error_code", None) for k, v in ended.items()}
    assert codes == {
        1: PilotErrorCode.PILOT_SIGNALLED,
        2: PilotErrorCode.KILLED,
        3: PilotErrorCode.PILOT_SIGNALLED,
    }
    assert not any(isinstance(v, Exited) for v in ended.values())


def test_two_jobs_of_one_key_get_two_warm_workers(tmp_path: Path) -> None:
    pool = WarmPool()
    command = ["cat"]  # serves until its input closes, as a warm worker does
    first = pool.take(("alice", "pyhf"), command, tmp_path / "warm.log")
    second = pool.take(("alice", "pyhf"), command, tmp_path / "warm.log")
    assert first is not second, "a worker serves one job at a time"
    pool.give_back(("alice", "pyhf"), first)
    assert pool.take(("alice", "pyhf"), command, tmp_path / "warm.log") is first, "reused"
    other_user = pool.take(("bob", "pyhf"), command, tmp_path / "warm.log")
    assert other_user not in (first, second)
    pool.give_back(("alice", "pyhf"), first)
    pool.give_back(("alice", "pyhf"), second)
    pool.give_back(("bob", "pyhf"), other_user)
    first.proc.wait(timeout=10)
    assert not first.alive(), "three idle, two kept: the one idle the longest is stopped"
    assert second.alive() and other_user.alive()
    pool.close()
    assert not second.alive() and not other_user.alive()


def test_a_packing_queue_starts_a_worker_per_slot_of_cores() -> None:
    def queue(pack: bool) -> QueueConfig:
        return QueueConfig.model_validate(
            {"name": "Q", "provider": "local", "cores": 4, "maxWorkers": 10, "packJobs": pack}
        )

    load = QueueLoad(activated_jobs=8, queued_workers=0, running_workers=0, activated_cores=8)
    assert new_workers(queue(True), QueueStatus.ONLINE, load) == 2
    assert new_workers(queue(False), QueueStatus.ONLINE, load) == 8
    # eight 1-core jobs of 1500 MiB on 4-core slots of 2000 MiB: one job fits per slot
    hungry = QueueLoad(
        activated_jobs=8, queued_workers=0, running_workers=0,
        activated_cores=8, activated_memory_mb=8 * 1500,
    )  # fmt: skip
    assert new_workers(queue(True), QueueStatus.ONLINE, hungry) == 6


NODE_QUEUE = """
[queues.ANALY_NODE]
provider = "local"
cores = 2
memory_mb = 4000
maxWalltime = 600
maxWorkers = 1
nQueueLimitWorker = 1
maxNewWorkersPerCycle = 1
"""

PAYLOAD = 'echo "$(date +%s.%N) $OMP_NUM_THREADS" > t.txt; sleep 4; date +%s.%N >> t.txt'


def _intervals(harvester: Harvester, task_id: int) -> dict[int, tuple[float, float, int, str]]:
    """Per job: start and end as the payload saw them, its thread count, its pilot."""
    out = harvester.user_dir / f"results-{task_id}"
    fetched = harvester.pbook("results", str(task_id), "-o", str(out))
    assert fetched.returncode == 0, fetched.output
    found = {}
    jobs = {j["job_index"]: j for j in harvester.jobs(task_id)}
    for path in sorted(out.iterdir()):
        first, last = path.read_text().split("\n")[:2]
        start, threads = first.split()
        serial = int(path.name.split("._")[1].split(".")[0])
        job = jobs[serial - 1]  # outputs are numbered from 1, jobs from 0
        found[job["id"]] = (float(start), float(last), int(threads), job["pilot_id"])
    return found


def _overlap(a: tuple[float, float, int, str], b: tuple[float, float, int, str]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


@pytest.mark.e2e
def test_one_pilot_runs_two_one_core_jobs_at_once_and_a_two_core_job_alone(
    harvester_factory: Callable[..., Harvester],
) -> None:
    harvester = harvester_factory(harvester_settings(NODE_QUEUE))
    common = ("--site", "ANALY_NODE", "--exec", PAYLOAD, "--outputs", "t.txt",
              "--containerImage", "base")  # fmt: skip
    pair = harvester.submit(*common, "--nJobs", "2", "--outDS", "user.alice.pair")
    assert harvester.wait_task(pair)["status"] == "done"
    runs = _intervals(harvester, pair)
    (a, b) = runs.values()
    assert a[3] == b[3], "one pilot (the queue has one 2-core slot)"
    assert _overlap(a, b), f"the two 1-core jobs ran at the same time: {runs}"
    assert a[2] == b[2] == 1, "each job has its own thread count"

    wide = harvester.submit(*common, "--nCore", "2", "--outDS", "user.alice.wide")
    narrow = harvester.submit(*common, "--nJobs", "2", "--outDS", "user.alice.narrow")
    assert harvester.wait_task(wide)["status"] == "done"
    assert harvester.wait_task(narrow)["status"] == "done"
    [big] = _intervals(harvester, wide).values()
    small = list(_intervals(harvester, narrow).values())
    assert big[2] == 2
    beside = [s for s in small if s[3] == big[3]]
    assert beside, "the 1-core jobs ran in the same pilot as the 2-core job"
    assert not any(_overlap(big, s) for s in beside), (big, small)


def test_each_user_has_a_pilot_cache_of_their_own(tmp_path: Path) -> None:
    """Jobs of two users may run side by side in one pilot: the writable cache each
    container sees (warm work dirs, JAX compilations) is its own user's."""
    from pilot.execution import job_dir
    from pilot.payload import container_request, owner_cache

    image = tmp_path / "image"
    (image / "srv" / "cache").mkdir(parents=True)
    base = tmp_path / "pilot"
    binds = {}
    for job_id, owner in ((1, "alice"), (2, "bob")):
        spec = _spec(job_id, 1, 1000).model_copy(update={"owner": owner, "image_path": str(image)})
        request = container_request(
            spec, image, base / f"job_{job_id}", [], owner_cache(base, owner)
        )
        binds[owner] = {b.source for b in request.binds if b.target == "/srv/cache"}
        warm = spec.model_copy(update={"transform": "pyhf_fit"})
        assert job_dir(base, WarmPool(), warm).is_relative_to(owner_cache(base, owner))
    assert binds == {
        "alice": {str(owner_cache(base, "alice"))},
        "bob": {str(owner_cache(base, "bob"))},
    }
    assert owner_cache(base, "../../etc").parent == base / "cache", "no way out by a name"


def test_a_site_compilation_cache_is_shared_by_pilots_but_not_by_users(tmp_path: Path) -> None:
    """With a queue's ``compileCache``, the JAX folder a container sees is its user's
    folder of the site's cache, the same for every pilot of the site and never another
    user's; bound over the pilot's own cache, so it is the one the container writes to."""
    from pilot.payload import container_request, owner_cache

    image = tmp_path / "image"
    (image / "srv" / "cache").mkdir(parents=True)
    site = tmp_path / "site-compilations"
    seen: dict[tuple[str, str], str] = {}
    for pilot in ("pilot-a", "pilot-b"):
        base = tmp_path / pilot
        for job_id, owner in ((1, "alice"), (2, "bob")):
            spec = _spec(job_id, 1, 1000).model_copy(
                update={"owner": owner, "image_path": str(image)}
            )
            request = container_request(
                spec, image, base / f"job_{job_id}", [], owner_cache(base, owner), site
            )
            targets = [b.target for b in request.binds]
            assert targets.index("/srv/cache/jax") > targets.index("/srv/cache")
            (jax,) = [b for b in request.binds if b.target == "/srv/cache/jax"]
            assert jax.writable and Path(jax.source).is_dir()
            seen[(pilot, owner)] = jax.source
    assert seen[("pilot-a", "alice")] == seen[("pilot-b", "alice")] == str(site / "alice" / "jax")
    assert seen[("pilot-a", "bob")] == seen[("pilot-b", "bob")] != seen[("pilot-a", "alice")]
    spec = _spec(3, 1, 1000).model_copy(update={"owner": "../x", "image_path": str(image)})
    request = container_request(
        spec, image, tmp_path / "j3", [], owner_cache(tmp_path, "../x"), site
    )
    (jax,) = [b for b in request.binds if b.target == "/srv/cache/jax"]
    assert Path(jax.source).parent.parent == site, "no way out of the site's cache by a name"
