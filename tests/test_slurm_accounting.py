"""Slurm as production sites run it: job accounting in slurmdbd (on MariaDB), and no job
completion log. A pilot job that has left slurmctld's memory is known only to plain
``sacct``; the provider must read its end there, not call the worker missed.

The cluster is ``scripts/slurm-cluster up --accounting`` with its own directory and ports,
and ``MinJobAge=2``, so slurmctld forgets ended jobs within a minute, as a busy production
controller does long before a harvester polls again.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from harvester.providers.base import WorkerResources
from harvester.providers.slurm import SlurmOptions, SlurmProvider
from protocol.states import WorkerStatus
from tests.helpers import REPO, wait_for

pytestmark = pytest.mark.e2e

ACCOUNTING_ENV = {
    "HPCAF_SLURM_DIR": "/tmp/hpcaf-slurm-accounting-tests",
    "HPCAF_SLURMCTLD_PORT": "6837",
    "HPCAF_SLURMD_PORT": "6838",
    "HPCAF_SLURMDBD_PORT": "6839",
    "HPCAF_MARIADB_PORT": "33079",
    "HPCAF_SLURM_MIN_JOB_AGE": "2",
}


@pytest.fixture(scope="module")
def accounting_conf() -> Iterator[Path]:
    env = {**os.environ, **ACCOUNTING_ENV}
    script = str(REPO / "scripts" / "slurm-cluster")
    up = subprocess.run(
        [script, "up", "--accounting"], env=env, capture_output=True, text=True, timeout=600
    )
    assert up.returncode == 0, up.stdout + up.stderr
    assert "accounting in slurmdbd" in up.stdout
    yield Path(ACCOUNTING_ENV["HPCAF_SLURM_DIR"]) / "slurm.conf"
    subprocess.run([script, "down"], env=env, capture_output=True, timeout=120)


def _slurm(conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), env={**os.environ, "SLURM_CONF": str(conf)}, capture_output=True, text=True
    )


def test_an_ended_pilot_is_read_from_slurmdbd(accounting_conf: Path, tmp_path: Path) -> None:
    provider = SlurmProvider(SlurmOptions(partition="debug", slurm_conf=str(accounting_conf)))
    resources = WorkerResources(cores=1, memory_mb=100, walltime_s=120)
    ok = provider.submit("true", resources, "hpcaf-acct-ok", tmp_path / "ok")
    bad = provider.submit("exit 3", resources, "hpcaf-acct-bad", tmp_path / "bad")

    def forgotten() -> bool:
        return all(
            _slurm(accounting_conf, "scontrol", "-o", "show", "job", b).returncode != 0
            for b in (ok, bad)
        )

    wait_for(forgotten, 150, "slurmctld to forget both ended jobs", interval=1)
    completion_log = _slurm(accounting_conf, "sacct", "-c", "-n", "-P", "-j", ok)
    assert "job completion is disabled" in (completion_log.stdout + completion_log.stderr), (
        "no job completion log here: sacct -c, which the provider read before, knows nothing"
    )

    found = provider.status([ok, bad])
    assert found[ok].status is WorkerStatus.FINISHED and found[ok].exit_code == 0, found[ok]
    assert found[bad].status is WorkerStatus.FAILED and found[bad].exit_code == 3, found[bad]
    assert "pilot exit code 3" in (found[bad].message or "")
