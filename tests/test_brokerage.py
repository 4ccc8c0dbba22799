"""Brokerage, the worker adjuster, and architecture parsing (pure functions)."""

from __future__ import annotations

import json

import pytest

from db.models import QueueStatus
from harvester.agents.adjuster import QueueLoad, new_workers
from harvester.agents.brokerage import JobNeeds, choose_queue
from harvester.architecture import GpuRequest, parse_architecture
from harvester.config import QueueConfig
from harvester.errors import InvalidRequest


def q(name: str, **kw) -> QueueConfig:  # type: ignore[no-untyped-def]
    return QueueConfig(name=name, provider="local", **kw)


def needs(**kw) -> JobNeeds:  # type: ignore[no-untyped-def]
    base = dict(
        cores=1, memory_mb=1000, walltime_s=0, gpu=None, sites=frozenset(), excluded=frozenset()
    )
    base.update(kw)
    return JobNeeds(**base)


ON = QueueStatus.ONLINE


def test_least_loaded_fitting_queue_wins() -> None:
    queues = [(q("A", maxWorkers=2), ON), (q("B", maxWorkers=4), ON)]
    assert choose_queue(queues, needs(), {"A": 1, "B": 1})[0] == "B"
    assert choose_queue(queues, needs(), {"A": 0, "B": 3})[0] == "A"


def test_resources_site_and_exclusions() -> None:
    queues = [
        (q("SMALL", cores=1, memory_mb=1000, maxWorkers=1), ON),
        (q("BIG", cores=8, memory_mb=16000, maxWorkers=1), ON),
        (q("OFF", cores=8, memory_mb=16000, maxWorkers=1), QueueStatus.OFFLINE),
    ]
    assert choose_queue(queues, needs(cores=4), {})[0] == "BIG"
    assert choose_queue(queues, needs(sites=frozenset({"SMALL"})), {})[0] == "SMALL"
    name, why = choose_queue(queues, needs(cores=4, excluded=frozenset({"BIG"})), {})
    assert name is None
    assert "SMALL: 1 cores per slot < 4" in why and "BIG: excluded" in why and "OFF: offline" in why


def test_a_site_list_is_any_of_its_queues_and_no_other() -> None:
    queues = [(q(name, maxWorkers=4), ON) for name in ("A", "B", "C")]
    both = needs(sites=frozenset({"A", "B"}))
    assert choose_queue(queues, both, {"A": 3, "B": 0, "C": 0})[0] == "B"
    assert choose_queue(queues, both, {"A": 0, "B": 3, "C": 0})[0] == "A"
    name, why = choose_queue(queues, needs(sites=frozenset({"A", "B"}), cores=2), {})
    assert name is None and "C: not a requested site" in why


def test_gpu_jobs_only_on_gpu_queues_and_back() -> None:
    queues = [(q("CPU", maxWorkers=1), ON), (q("GPU", gpus=1, maxWorkers=1), ON)]
    assert choose_queue(queues, needs(gpu=GpuRequest(vendor="nvidia")), {})[0] == "GPU"
    assert choose_queue(queues, needs(gpu=None), {"CPU": 50})[0] == "CPU"
    name, why = choose_queue(queues[:1], needs(gpu=GpuRequest(vendor="nvidia")), {})
    assert name is None and "CPU: no GPU" in why


def test_manual_queues_only_as_last_resort() -> None:
    queues = [(q("AUTO", maxWorkers=2), ON), (q("MANUAL", maxWorkers=0), ON)]
    assert choose_queue(queues, needs(), {"AUTO": 100})[0] == "AUTO"
    assert choose_queue(queues, needs(sites=frozenset({"MANUAL"})), {})[0] == "MANUAL"


def test_test_queues_need_the_site() -> None:
    queues = [(q("T", maxWorkers=1), QueueStatus.TEST)]
    assert choose_queue(queues, needs(), {})[0] is None
    assert choose_queue(queues, needs(sites=frozenset({"T"})), {})[0] == "T"


@pytest.mark.parametrize(
    ("load", "expected"),
    [
        (QueueLoad(activated_jobs=10, queued_workers=0, running_workers=0), 2),  # per-cycle cap
        (QueueLoad(activated_jobs=1, queued_workers=0, running_workers=0), 1),  # demand
        (QueueLoad(activated_jobs=10, queued_workers=1, running_workers=5), 0),  # maxWorkers
        (QueueLoad(activated_jobs=10, queued_workers=3, running_workers=0), 0),  # queue limit
        (QueueLoad(activated_jobs=10, queued_workers=2, running_workers=0), 1),  # queue limit
        (QueueLoad(activated_jobs=1, queued_workers=1, running_workers=0), 0),  # covered
        (QueueLoad(activated_jobs=0, queued_workers=0, running_workers=0), 0),
    ],
)
def test_adjuster(load: QueueLoad, expected: int) -> None:
    queue = q("A", maxWorkers=6, nQueueLimitWorker=3, maxNewWorkersPerCycle=2)
    assert new_workers(queue, ON, load) == expected
    assert new_workers(queue, QueueStatus.OFFLINE, load) == 0


@pytest.mark.parametrize(
    ("value", "gpu", "vendor"),
    [
        (None, False, None),
        ("", False, None),
        ("el9#x86_64", False, None),
        ("nvidia-gpu", True, "nvidia"),
        ("#&nvidia", True, "nvidia"),
        ("#&nvidia:cuda>=12.0:vram>=40960:model!=.*P100.*", True, "nvidia"),
        ('{"gpu_spec": {"vendor": "nvidia", "vram": 40960}}', True, "nvidia"),
    ],
)
def test_architecture_forms(value: str | None, gpu: bool, vendor: str | None) -> None:
    request = parse_architecture(value)
    assert request.needs_gpu is gpu and request.vendor == vendor


@pytest.mark.parametrize(
    "value",
    [
        "nvidia-gpu",
        "#&nvidia:cuda>=12.0:vram>=40G:model!=.*P100.*:uarch=ampere:driver>=535.54",
        '{"gpu_spec": {"vendor": "amd", "model": "MI2.*", "version": "6.0", "vram": 65536}}',
    ],
)
def test_gpu_request_survives_the_task_row(value: str) -> None:
    """Parsed at submission, kept as JSON on the task, read back by brokerage unchanged."""
    gpu = parse_architecture(value).gpu
    assert gpu is not None
    assert GpuRequest.from_document(json.loads(json.dumps(gpu.to_document()))) == gpu


@pytest.mark.parametrize("value", ["#&acme", "{oops", '{"cpu": 1}', "x86 64 !!"])
def test_architecture_malformed(value: str) -> None:
    with pytest.raises(InvalidRequest):
        parse_architecture(value)


def test_multi_node_allocations_share_the_queue_caps() -> None:
    """Workers are asked per allocation size (a 2-node job gets a 2-node worker of its
    own), within the queue's caps counted over all of its workers."""
    from harvester.agents.adjuster import new_workers_by_nodes

    queue = QueueConfig(
        name="Q", provider="slurm", cores=2, maxNodes=2, allow_network=True, maxWorkers=4
    )
    loads = {
        1: QueueLoad(activated_jobs=3, queued_workers=0, running_workers=1),
        2: QueueLoad(activated_jobs=2, queued_workers=1, running_workers=0),
    }
    # room: 4 - 2 = 2 workers; one-node jobs first (3 wanted), nothing left for 2 nodes
    assert new_workers_by_nodes(queue, ON, loads, queued=1, running=1) == {1: 2}
    loads[1] = QueueLoad(activated_jobs=1, queued_workers=1, running_workers=0)
    # one-node demand met by the queued worker; the 2-node jobs get one more allocation
    assert new_workers_by_nodes(queue, ON, loads, queued=2, running=0) == {2: 1}
    # workers of a size no activated job needs count against the caps too
    del loads[1]
    assert new_workers_by_nodes(queue, ON, loads, queued=1, running=3) == {}


def test_multi_node_jobs_only_where_an_allocation_holds_them() -> None:
    queues = [
        (q("ONE", cores=8, maxWorkers=4), ON),
        (
            QueueConfig(
                name="MPI", provider="slurm", cores=8, maxNodes=4, allow_network=True, maxWorkers=1
            ),
            ON,
        ),
    ]
    assert choose_queue(queues, needs(nodes=4, cores=8), {"MPI": 5})[0] == "MPI"
    name, why = choose_queue(queues, needs(nodes=8), {})
    assert name is None
    assert "ONE: at most 1 nodes per allocation < 8" in why
    assert "MPI: at most 4 nodes per allocation < 8" in why
