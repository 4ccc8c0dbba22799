"""The exact container command lines (bubblewrap and Apptainer)."""

from __future__ import annotations

from pathlib import Path

from pilot.runtimes.apptainer import ApptainerRuntime
from pilot.runtimes.base import Bind, ContainerRequest
from pilot.runtimes.bwrap import BubblewrapRuntime


def request(**kw) -> ContainerRequest:  # type: ignore[no-untyped-def]
    base = dict(
        image=Path("/img/base/rootfs"),
        argv=["python3", "x.py"],
        workdir=Path("/scratch/job_1"),
        transforms_dir=Path("/opt/t"),
        env={"PANDAID": "1"},
    )
    base.update(kw)
    return ContainerRequest(**base)


def test_bwrap_isolated_by_default() -> None:
    cmd = BubblewrapRuntime().command(request(binds=[Bind.parse("/cvmfs")]))
    joined = " ".join(cmd)
    assert cmd[:4] == ["bwrap", "--ro-bind", "/img/base/rootfs", "/"]
    assert "--bind /scratch/job_1 /srv/workDir" in joined
    assert "--ro-bind /opt/t /srv/transforms" in joined
    assert "--ro-bind /cvmfs /cvmfs" in joined
    assert "--unshare-all" in cmd and "--share-net" not in cmd
    assert "--die-with-parent" in cmd and "--clearenv" in cmd
    assert "--setenv PANDAID 1" in joined
    assert cmd[-3:] == ["--", "python3", "x.py"]


def test_bwrap_network_when_queue_allows() -> None:
    cmd = BubblewrapRuntime().command(request(allow_network=True))
    assert cmd.index("--share-net") > cmd.index("--unshare-all")


def test_apptainer_like_pilot3() -> None:
    cmd = ApptainerRuntime().command(request(gpu=True, binds=[Bind.parse("/data:/data:rw")]))
    assert cmd[:4] == ["apptainer", "exec", "--containall", "--cleanenv"]
    joined = " ".join(cmd)
    assert "--pwd /srv/workDir" in joined
    assert "-B /scratch/job_1:/srv/workDir" in joined
    assert "-B /data:/data:rw" in joined
    assert "--nv" in cmd and "--net --network none" in joined
    assert cmd[-3:] == ["/img/base/rootfs", "python3", "x.py"]
    assert "--nv" not in ApptainerRuntime().command(request())
