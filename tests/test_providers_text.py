"""Provider pieces that need no batch system: rendered scripts, submit descriptions,
state tables, and the HTCondor schedd boundary.

No HTCondor pool can run on the machines these tests run on (its daemons are
not installable here), so the schedd calls go to a thin in-memory fake of the
:class:`ScheddClient` protocol; the submit descriptions are built with the real
``htcondor2`` bindings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from harvester.config import QueueConfig
from harvester.errors import ConfigError
from harvester.providers.base import WorkerResources
from harvester.providers.htcondor import HTCONDOR_STATES, HTCondorOptions, HTCondorProvider
from harvester.providers.registry import make_provider
from harvester.providers.slurm import SLURM_STATES, SlurmOptions, SlurmProvider, _exit_code
from protocol.states import WorkerStatus

GPU = WorkerResources(cores=8, memory_mb=32000, walltime_s=7200, gpus=2)


def test_slurm_script_renders_directives(tmp_path: Path) -> None:
    provider = SlurmProvider(
        SlurmOptions(
            partition="gpu",
            account="atlas",
            qos="normal",
            extra_directives=["--constraint=a100"],
            environment={"X509_CERT_DIR": "/etc/grid certs"},
        )
    )
    text = provider.render_script("pilot --queue Q", GPU, "hpcaf-Q-7", tmp_path)
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --account=atlas",
        "#SBATCH --qos=normal",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=32000M",
        "#SBATCH --time=120",
        "#SBATCH --gres=gpu:2",
        "#SBATCH --job-name=hpcaf-Q-7",
        "#SBATCH --constraint=a100",
        f"#SBATCH --output={tmp_path}/stdout",
        "export X509_CERT_DIR='/etc/grid certs'",
        "pilot --queue Q",
    ):
        assert line in text.splitlines(), line
    assert text.startswith("#!/bin/bash\n#SBATCH")
    cpu = provider.render_script("p", WorkerResources(walltime_s=61), "n", tmp_path)
    assert "#SBATCH --time=2" in cpu and "--gres" not in cpu


def test_slurm_state_table_and_exit_codes() -> None:
    assert SLURM_STATES["PENDING"] is WorkerStatus.SUBMITTED
    assert SLURM_STATES["RUNNING"] is WorkerStatus.RUNNING
    assert SLURM_STATES["COMPLETED"] is WorkerStatus.FINISHED
    assert SLURM_STATES["CANCELLED"] is WorkerStatus.CANCELLED
    assert SLURM_STATES["NODE_FAIL"] is WorkerStatus.FAILED
    assert _exit_code("0:0") == 0 and _exit_code("3:0") == 3 and _exit_code("0:9") == 137
    assert _exit_code("") is None


def test_unknown_native_state_is_unknown_not_guessed(caplog: pytest.LogCaptureFixture) -> None:
    from harvester.providers.base import map_native_state

    assert map_native_state(SLURM_STATES, "WEIRD_NEW_STATE", provider="slurm") is None
    assert "WEIRD_NEW_STATE" in caplog.text


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "queue Q: field provider_options.partition: Field required"),
        ({"partition": ""}, "provider_options.partition"),
        ({"partition": "x", "colour": 1}, "provider_options.colour"),
    ],
)
def test_slurm_options_validated(options: dict[str, Any], message: str) -> None:
    queue = QueueConfig(name="Q", provider="slurm", provider_options=options)
    with pytest.raises(ConfigError, match=message):
        make_provider(queue)


class FakeSchedd:
    """In-memory stand-in for a schedd (the ScheddClient protocol), recording calls."""

    def __init__(self) -> None:
        self.queue: dict[str, dict[str, Any]] = {}
        self.history_ads: dict[str, dict[str, Any]] = {}
        self.submitted: list[Any] = []
        self.removed: list[str] = []
        self.next_cluster = 100

    def submit(self, description: Any, count: int) -> int:
        cluster = self.next_cluster
        self.next_cluster += 1
        self.submitted.append(description)
        self.queue[f"{cluster}.0"] = {"ClusterId": cluster, "ProcId": 0, "JobStatus": 1}
        return cluster

    def query(self, constraint: str, projection: Sequence[str]) -> list[Mapping[str, Any]]:
        return [
            ad
            for key, ad in self.queue.items()
            if f"ClusterId == {key.split('.')[0]}" in constraint
        ]

    def history(
        self, constraint: str, projection: Sequence[str], match: int
    ) -> list[Mapping[str, Any]]:
        return [
            ad
            for key, ad in self.history_ads.items()
            if f"ClusterId == {key.split('.')[0]}" in constraint
        ][:match]

    def remove(self, job_ids: list[str], reason: str) -> None:
        self.removed += job_ids
        for job_id in job_ids:
            if job_id in self.queue:
                self.queue[job_id]["JobStatus"] = 3


def test_htcondor_gpu_submit_description(tmp_path: Path) -> None:
    provider = HTCondorProvider(
        HTCondorOptions(
            require_gpus="Capability >= 8.0 && GlobalMemoryMb >= 40000",
            accounting_group="group_atlas.analysis",
            extra_attributes={"+ProjectName": '"hpcaf"'},
        ),
        schedd_factory=lambda _o: FakeSchedd(),
    )
    description = provider.submit_description(tmp_path / "pilot.sh", GPU, "hpcaf-G-1", tmp_path)
    text = str(description)
    assert description["request_gpus"] == "2"
    assert description["require_gpus"] == "Capability >= 8.0 && GlobalMemoryMb >= 40000"
    assert description["request_cpus"] == "8" and description["request_memory"] == "32000MB"
    assert "MY.MaxRuntime = 7200" in text and "accounting_group = group_atlas.analysis" in text
    assert f"executable = {tmp_path / 'pilot.sh'}" in text
    cpu = str(provider.submit_description(tmp_path / "p.sh", WorkerResources(), "c", tmp_path))
    assert "request_gpus" not in cpu


def test_htcondor_life_cycle_with_fake_schedd(tmp_path: Path) -> None:
    schedd = FakeSchedd()
    provider = HTCondorProvider(HTCondorOptions(), schedd_factory=lambda _o: schedd)
    a = provider.submit("pilot", WorkerResources(), "w1", tmp_path / "w1")
    b = provider.submit("pilot", WorkerResources(), "w2", tmp_path / "w2")
    assert (a, b) == ("100.0", "101.0")
    assert (tmp_path / "w1" / "pilot.sh").read_text().rstrip().endswith("pilot")
    schedd.queue[a]["JobStatus"] = 2
    schedd.queue[b]["JobStatus"] = 5
    schedd.queue[b]["HoldReason"] = "Error from slot1: out of disk"
    states = provider.status([a, b, "999.0"])
    assert states[a].status is WorkerStatus.RUNNING
    assert states[b].status is WorkerStatus.FAILED and "out of disk" in (states[b].message or "")
    assert schedd.removed == [b], "held pilots are removed"
    assert states["999.0"].status is WorkerStatus.MISSED
    del schedd.queue[a]
    schedd.history_ads[a] = {"ClusterId": 100, "ProcId": 0, "JobStatus": 4, "ExitCode": 3}
    assert provider.status([a])[a].status is WorkerStatus.FAILED
    schedd.history_ads[a]["ExitCode"] = 0
    assert provider.status([a])[a].status is WorkerStatus.FINISHED
    provider.cancel([a])
    assert a in schedd.removed


def test_htcondor_table_covers_every_job_status() -> None:
    # HTCondor JobStatus: 1 Idle, 2 Running, 3 Removed, 4 Completed, 5 Held,
    # 6 Transferring Output, 7 Suspended
    assert sorted(HTCONDOR_STATES) == ["1", "2", "3", "4", "5", "6", "7"]
    for code in HTCONDOR_STATES:
        ad = {"JobStatus": int(code), "ExitCode": 0}
        assert HTCondorProvider.from_ad(ad).status is HTCONDOR_STATES[code]
