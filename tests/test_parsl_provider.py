"""The ``parsl`` provider: Parsl's execution providers driven by hpcaf's submitter, monitor
and sweeper. Parsl's ``LocalProvider`` runs a task for real here (its Slurm twin is in
test_slurm.py); the configuration is refused at start for names and options Parsl does
not know; Kubernetes' pod specification is checked as Parsl renders it.

No Kubernetes cluster can run on the machines these tests run on, so the Kubernetes
test gives Parsl's provider a recorder in place of its API client (the one call that
would reach a cluster) and checks the pod it was asked to create.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harvester.config import QueueConfig
from harvester.errors import ConfigError
from harvester.providers.base import WorkerResources
from harvester.providers.parsl_bridge import PARSL_STATES, ParslProvider
from harvester.providers.registry import make_provider
from protocol.states import WorkerStatus
from tests.helpers import Harvester, wait_for

PARSL_LOCAL_QUEUE = """
[queues.ANALY_PARSL]
provider = "parsl"
cores = 1
memory_mb = 1000
maxWalltime = 600
maxWorkers = 2
nQueueLimitWorker = 2
maxNewWorkersPerCycle = 2

[queues.ANALY_PARSL.provider_options]
provider = "LocalProvider"
launcher = "SingleNodeLauncher"
polling_interval_s = 1
"""


def test_every_parsl_job_state_has_a_worker_state() -> None:
    from parsl.jobs.states import JobState

    assert set(PARSL_STATES) == {s.name for s in JobState} - {"UNKNOWN"}
    assert PARSL_STATES["COMPLETED"] is WorkerStatus.FINISHED
    assert PARSL_STATES["TIMEOUT"] is WorkerStatus.FAILED


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"provider": "NoSuchProvider"}, "field provider_options.provider: 'NoSuchProvider'"),
        ({"provider": "LocalProvider", "launcher": "Nope"}, "field provider_options.launcher"),
        (
            {"provider": "SlurmProvider", "options": {"partition": "x", "colour": "red"}},
            "field provider_options.options.colour: SlurmProvider takes no option 'colour'",
        ),
        (
            {"provider": "LocalProvider", "launcher_options": {"speed": 1}},
            "field provider_options.launcher_options",
        ),
        (
            {
                "provider": "LocalProvider",
                "launcher": "SrunLauncher",
                "launcher_options": {"overrides": "x", "speed": 1},
            },
            "field provider_options.launcher_options.speed: SrunLauncher takes no option",
        ),
        ({"provider": "LocalProvider", "extra": 1}, "field provider_options.extra"),
    ],
)
def test_unknown_names_and_options_are_refused(options: dict[str, Any], message: str) -> None:
    queue = QueueConfig(name="Q", provider="parsl", provider_options=options)
    with pytest.raises(ConfigError, match=f"queue Q: {message}"):
        make_provider(queue)


def test_the_harvester_refuses_such_a_queue_at_start(tmp_path: Path) -> None:
    """The service does not start; its message names the queue and the field."""
    config = PARSL_LOCAL_QUEUE.replace('"LocalProvider"', '"SlurmProvider"') + (
        'options = { partition = "debug", colour = "red" }\n'
    )
    (tmp_path / "harvester.toml").write_text(config)
    env = {"HPCAF_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "harvester.cli", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "queue ANALY_PARSL: field provider_options.options.colour" in output
    assert "Traceback" not in output


def test_the_queue_slot_becomes_the_parsl_options() -> None:
    queue = QueueConfig(
        name="Q",
        provider="parsl",
        cores=8,
        memory_mb=16000,
        walltime_s=5400,
        provider_options={"provider": "SlurmProvider", "options": {"partition": "p"}},
    )
    provider = make_provider(queue)
    assert isinstance(provider, ParslProvider)
    slurm = provider.parsl
    assert (slurm.walltime, slurm.cores_per_node, slurm.mem_per_node) == ("01:30:00", 8, 16)
    # what the queue's options set wins over the slot
    queue.provider_options["options"]["walltime"] = "00:10:00"
    assert make_provider(queue).parsl.walltime == "00:10:00"


@pytest.mark.e2e
def test_a_task_runs_on_parsl_local_provider_workers(
    harvester_factory: Callable[..., Harvester],
) -> None:
    h = harvester_factory(PARSL_LOCAL_QUEUE)
    task_id = h.submit(
        "--containerImage",
        "base",
        "--exec",
        "echo $PANDAID > o.txt",
        "--outputs",
        "o.txt",
        "--outDS",
        "user.alice.parsl",
        "--nJobs",
        "3",
        "--site",
        "ANALY_PARSL",
    )
    assert h.wait_task(task_id, timeout=180)["status"] == "done"
    jobs = h.jobs(task_id)
    assert {j["status"] for j in jobs} == {"finished"}
    rows = h.query("SELECT batch_id, status, queue FROM workers")
    assert rows and all(queue == "ANALY_PARSL" for _, _, queue in rows)
    assert all(str(batch_id).isdigit() for batch_id, _, _ in rows), "Parsl's job ids (PIDs)"
    assert {j["batch_id"] for j in jobs} <= {str(b) for b, _, _ in rows}
    # the pilots leave when idle: Parsl's COMPLETED is the workers' finished
    wait_for(
        lambda: (
            {s for _, s, _ in h.query("SELECT batch_id, status, queue FROM workers")}
            == {"finished"}
        ),
        60,
        "the workers to finish",
    )


class PodRecorder:
    """Stands in for ``kubernetes.client.CoreV1Api`` (no cluster here): records pods."""

    def __init__(self) -> None:
        self.created: list[tuple[str, Any]] = []

    def create_namespaced_pod(self, namespace: str, body: Any) -> Any:
        self.created.append((namespace, body))

        class Response:
            status = "Pending"

        return Response()


def test_a_kubernetes_queue_renders_the_pilot_pod(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("kubernetes")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: site\n"
        "clusters: [{name: site, cluster: {server: 'https://127.0.0.1:6443'}}]\n"
        "users: [{name: hpcaf, user: {token: not-a-real-token}}]\n"
        "contexts: [{name: site, context: {cluster: site, user: hpcaf, namespace: hpc}}]\n"
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    from kubernetes.config import kube_config  # read KUBECONFIG when first imported

    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
    queue = QueueConfig(
        name="ANALY_K8S",
        provider="parsl",
        cores=4,
        memory_mb=8000,
        provider_options={
            "provider": "KubernetesProvider",
            "options": {"image": "registry.example.org/hpcaf/pilot:1", "namespace": "hpc"},
        },
    )
    provider = make_provider(queue)
    recorder = PodRecorder()
    provider.parsl.kube_client = recorder
    command = "pilot --server https://harvester.example.org --queue ANALY_K8S --worker-id 7"
    job_id = provider.submit(command, WorkerResources(cores=4), "hpcaf-ANALY_K8S-7", tmp_path)
    ((namespace, pod),) = recorder.created
    assert namespace == "hpc"
    container = pod.spec.containers[0]
    assert container.image == "registry.example.org/hpcaf/pilot:1"
    assert container.command == ["/bin/bash"] and command in container.args[1]
    assert container.resources.requests == {"cpu": "4", "memory": "8000Mi"}
    assert container.resources.limits == {"cpu": "4", "memory": "8000Mi"}
    assert pod.metadata.labels == {"parsl-job-id": job_id}
    assert pod.metadata.name.startswith("hpcaf-analy-k8s-7")


def test_a_restarted_harvester_follows_its_parsl_workers(tmp_path: Path) -> None:
    """A new provider object (the harvester restarted) learns an existing worker through
    ``track`` and follows it to its end; a worker it cannot follow is missed."""
    queue = QueueConfig(name="Q", provider="parsl", provider_options={"provider": "LocalProvider"})
    first = make_provider(queue)
    marker = tmp_path / "went-on"
    command = f"sleep 2; touch {marker}"
    batch_id = first.submit(command, WorkerResources(), "hpcaf-Q-1", tmp_path / "w1")
    assert first.status([batch_id])[batch_id].status is WorkerStatus.RUNNING

    restarted = make_provider(queue)
    unknown = restarted.status([batch_id])[batch_id]
    assert unknown.status is WorkerStatus.MISSED, "untracked: Parsl does not know it"
    restarted.track(batch_id, tmp_path / "w1")
    assert restarted.status([batch_id])[batch_id].status is WorkerStatus.RUNNING
    wait_for(
        lambda: restarted.status([batch_id])[batch_id].status is WorkerStatus.FINISHED,
        30,
        "the worker to end",
    )
    assert marker.exists(), "the worker ran to its end while the harvester was away"
    restarted.track("999999", tmp_path / "nothing-here")
    assert restarted.status(["999999"])["999999"].status is WorkerStatus.MISSED
