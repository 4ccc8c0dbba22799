"""GPUs from submission to the container: parsing, brokerage, discovery, command lines,
and a GPU queue beside a CPU queue with real harvester and pilots.

No GPU is needed: the GPU pilot in the end-to-end test is declared by a recorded
nvidia-smi output (tests/data/nvidia-smi-a100.txt), as the issue allows.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from db.models import QueueStatus
from harvester.agents.brokerage import JobNeeds, choose_queue
from harvester.architecture import GpuRequest, parse_architecture, parse_vram
from harvester.config import QueueConfig
from harvester.errors import InvalidRequest
from pilot.gpus import device_nodes, driver_libraries, parse, slot_gpus
from pilot.runtimes.apptainer import ApptainerRuntime
from pilot.runtimes.base import ContainerRequest
from pilot.runtimes.bwrap import BubblewrapRuntime
from tests.helpers import Harvester, wait_for

RECORDED = Path(__file__).parent / "data" / "nvidia-smi-a100.txt"


# -- parsing -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("nvidia-gpu", GpuRequest(vendor="nvidia")),
        ("#&nvidia", GpuRequest(vendor="nvidia")),
        ("el9@x86_64#avx2&nvidia", GpuRequest(vendor="nvidia")),
        (
            "#&nvidia:cuda>=12.0:vram>=40960:model!=.*P100.*",
            GpuRequest(
                vendor="nvidia",
                min_cuda=(12, 0),
                min_vram_mb=40960,
                model=".*P100.*",
                model_negated=True,
            ),
        ),
        (
            "#&nvidia:uarch=Ampere:driver>=575.0:vram>=40G",
            GpuRequest(
                vendor="nvidia", microarchitecture="Ampere", min_driver=(575, 0), min_vram_mb=40960
            ),
        ),
        (
            '{"gpu_spec": {"vendor": "nvidia", "model": "A100.*", "version": "12.2", '
            '"vram": "80GB", "microarchitecture": "Ampere", "driver_version": "535"}}',
            GpuRequest(
                vendor="nvidia",
                model="A100.*",
                min_cuda=(12, 2),
                min_vram_mb=81920,
                microarchitecture="Ampere",
                min_driver=(535,),
            ),
        ),
        ("amd-gpu", GpuRequest(vendor="amd")),
    ],
)
def test_every_documented_form(value: str, expected: GpuRequest) -> None:
    assert parse_architecture(value).gpu == expected


def test_cpu_only_forms() -> None:
    for value in (None, "", "el9#x86_64", "x86_64-el9"):
        assert parse_architecture(value).gpu is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("#&acme", "GPU vendor 'acme'"),
        ("voodoo-gpu", "GPU vendor 'voodoo'"),
        ("#&nvidia:vram>=lots", "invalid vram 'lots'"),
        ("#&nvidia:vram>=0", "makes no sense"),
        ("#&nvidia:vram>=40TB", "invalid vram"),
        ("#&nvidia:cuda>=twelve", "invalid cuda version"),
        ("#&nvidia:cuda<=12", "is not 'key>=value'"),
        ("#&nvidia:colour=red", "unsupported condition"),
        ("#&nvidia:model=([", "bad model pattern"),
        ('{"gpu_spec": {"vendor": "nvidia", "speed": 9}}', "unknown gpu_spec keys: speed"),
        ("{nope", "invalid architecture JSON"),
        ("x86 64 !!", "expected 'nvidia-gpu'"),
    ],
)
def test_malformed_forms(value: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        parse_architecture(value)


def test_vram_units() -> None:
    assert parse_vram("40960") == parse_vram("40G") == parse_vram("40GiB") == 40960
    assert parse_vram("512M") == 512


# -- brokerage ---------------------------------------------------------------------


def gpu_queue(name: str, *nodes: dict[str, object], **kw: object) -> QueueConfig:
    return QueueConfig(
        name=name, provider="local", gpus=1, maxWorkers=1, gpu_nodes=list(nodes), **kw
    )  # type: ignore[arg-type]


A100 = {
    "model": "NVIDIA A100-SXM4-40GB",
    "vram_mb": 40960,
    "cuda": "12.4",
    "driver": "550.54",
    "microarchitecture": "Ampere",
}
H100 = {
    "model": "NVIDIA H100 80GB HBM3",
    "vram_mb": 81920,
    "cuda": "12.8",
    "driver": "570.10",
    "microarchitecture": "Hopper",
}
P100 = {
    "model": "Tesla P100-PCIE-16GB",
    "vram_mb": 16384,
    "cuda": "12.2",
    "driver": "535.0",
    "microarchitecture": "Pascal",
}

QUEUES = [
    (QueueConfig(name="CPU", provider="local", maxWorkers=4), QueueStatus.ONLINE),
    (gpu_queue("GPU_A100", A100), QueueStatus.ONLINE),
    (gpu_queue("GPU_MIXED", H100, P100), QueueStatus.ONLINE),
    (gpu_queue("GPU_H100", H100), QueueStatus.ONLINE),
]


@pytest.mark.parametrize(
    ("architecture", "queue"),
    [
        (None, "CPU"),
        ("nvidia-gpu", "GPU_A100"),  # all tie; first by name
        ("#&nvidia:vram>=40960", "GPU_A100"),  # MIXED fails: the P100 node has 16 GB
        ("#&nvidia:vram>=65536", "GPU_H100"),
        ("#&nvidia:model=.*P100.*", "GPU_MIXED"),  # model: any node of the queue
        ("#&nvidia:uarch=Hopper:cuda>=12.6", "GPU_H100"),  # MIXED fails: CUDA on every node
        ("#&nvidia:driver>=600", None),
    ],
)
def test_brokerage_table(architecture: str | None, queue: str | None) -> None:
    needs = JobNeeds(
        cores=1,
        memory_mb=0,
        walltime_s=0,
        gpu=parse_architecture(architecture).gpu,
        sites=frozenset(),
        excluded=frozenset(),
    )
    chosen, why = choose_queue(QUEUES, needs, {})
    assert chosen == queue, why
    if queue is None:
        assert "GPU_H100: not every node has driver >= 600" in why


def test_cpu_jobs_stay_off_gpu_queues_unless_allowed() -> None:
    needs = JobNeeds(
        cores=1, memory_mb=0, walltime_s=0, gpu=None, sites=frozenset(), excluded=frozenset()
    )
    only_gpu = [(gpu_queue("G", A100), QueueStatus.ONLINE)]
    assert choose_queue(only_gpu, needs, {})[0] is None
    shared = [(gpu_queue("G", A100, allow_cpu_jobs=True), QueueStatus.ONLINE)]
    assert choose_queue(shared, needs, {})[0] == "G"


# -- discovery and command lines ---------------------------------------------------


def test_recorded_nvidia_smi_and_slot_allocation() -> None:
    gpus = parse(RECORDED.read_text())
    assert [(g.index, g.memory_mb, g.cuda) for g in gpus] == [
        ("0", 40960, "12.4"),
        ("1", 40960, "12.4"),
    ]
    assert gpus[0].name == "NVIDIA A100-SXM4-40GB" and gpus[0].driver == "550.54.15"
    assert [g.index for g in slot_gpus(gpus, {"CUDA_VISIBLE_DEVICES": "1"})] == ["1"]
    assert [g.index for g in slot_gpus(gpus, {"CUDA_VISIBLE_DEVICES": gpus[0].uuid})] == ["0"]
    assert [g.index for g in slot_gpus(gpus, {"SLURM_JOB_GPUS": "0,1"})] == ["0", "1"]
    assert slot_gpus(gpus, {"CUDA_VISIBLE_DEVICES": ""}) == []
    assert len(slot_gpus(gpus, {})) == 2


# A node where nvidia-smi's order is not the driver's: index 0 is /dev/nvidia3.
H100 = "NVIDIA H100 80GB HBM3, 81559, 560.35.03"
TWO_GPUS_BY_BUS = f"""\
0, {H100}, GPU-aaaa0000-0000-0000-0000-000000000000, 00000000:3B:00.0
1, {H100}, GPU-bbbb1111-1111-1111-1111-111111111111, 00000000:86:00.0
CUDA Version: 12.6
"""
MIG_LISTING = """\
GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-aaaa0000-0000-0000-0000-000000000000)
  MIG 1g.10gb     Device  0: (UUID: MIG-1111aaaa-0000-5000-8000-000000000001)
  MIG 3g.40gb     Device  1: (UUID: MIG-2222aaaa-0000-5000-8000-000000000002)
GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-bbbb1111-1111-1111-1111-111111111111)
"""


def fake_driver(root: Path, minors: dict[str, int], caps: int = 0) -> tuple[Path, Path]:
    """A /proc/driver/nvidia/gpus and a /dev with the device files of ``minors``."""
    proc, dev = root / "proc", root / "dev"
    for bus, minor in minors.items():
        (proc / bus).mkdir(parents=True)
        (proc / bus / "information").write_text(
            f"Model: \t\t NVIDIA H100\nDevice Minor: \t {minor}\n"
        )
    dev.mkdir()
    for name in ["nvidiactl", "nvidia-uvm", *(f"nvidia{m}" for m in minors.values())]:
        (dev / name).touch()
    if caps:
        (dev / "nvidia-caps").mkdir()
        for n in range(1, caps + 1):
            (dev / "nvidia-caps" / f"nvidia-cap{n}").touch()
    return proc, dev


def test_device_files_are_chosen_by_minor_not_by_index(tmp_path: Path) -> None:
    proc, dev = fake_driver(tmp_path, {"0000:3b:00.0": 3, "0000:86:00.0": 1})
    gpus = parse(TWO_GPUS_BY_BUS, proc)
    assert [(g.index, g.minor, g.cuda) for g in gpus] == [("0", 3, "12.6"), ("1", 1, "12.6")]
    assert device_nodes(gpus[:1], dev) == [
        f"{dev}/nvidiactl",
        f"{dev}/nvidia-uvm",
        f"{dev}/nvidia3",
    ]
    # Slurm names device minors; CUDA_VISIBLE_DEVICES names nvidia-smi's indices or UUIDs
    assert [g.uuid for g in slot_gpus(gpus, {"SLURM_JOB_GPUS": "3"})] == [gpus[0].uuid]
    assert [g.uuid for g in slot_gpus(gpus, {"CUDA_VISIBLE_DEVICES": "1"})] == [gpus[1].uuid]
    # no driver folder: the index stands in, as before
    assert [g.device_file for g in parse(TWO_GPUS_BY_BUS, tmp_path / "none")] == [
        "nvidia0",
        "nvidia1",
    ]


def test_mig_instances_are_the_slots_gpus_with_their_parents_files(tmp_path: Path) -> None:
    proc, dev = fake_driver(tmp_path, {"0000:3b:00.0": 3, "0000:86:00.0": 1}, caps=2)
    gpus = parse(TWO_GPUS_BY_BUS + MIG_LISTING, proc)
    assert [(g.index, g.memory_mb, g.minor, g.parent_uuid is not None) for g in gpus] == [
        ("0:0", 10240, 3, True),
        ("0:1", 40960, 3, True),
        ("1", 81559, 1, False),
    ], "a GPU in MIG mode is listed as its instances"
    (mine,) = slot_gpus(gpus, {"CUDA_VISIBLE_DEVICES": "MIG-2222aaaa-0000-5000-8000-000000000002"})
    assert mine.name == "NVIDIA H100 80GB HBM3 MIG 3g.40gb"
    whole = slot_gpus(gpus, {"CUDA_VISIBLE_DEVICES": "GPU-aaaa0000-0000-0000-0000-000000000000"})
    assert [g.index for g in whole] == ["0:0", "0:1"], "the whole GPU: all its instances"
    assert [g.index for g in slot_gpus(gpus, {"SLURM_JOB_GPUS": "3"})] == ["0:0", "0:1"]
    unknown_minor = parse(TWO_GPUS_BY_BUS + MIG_LISTING, tmp_path / "no-driver-folder")
    assert [g.device_file for g in unknown_minor] == ["nvidia0", "nvidia0", "nvidia1"]
    assert device_nodes([mine], dev) == [
        f"{dev}/nvidiactl",
        f"{dev}/nvidia-uvm",
        f"{dev}/nvidia3",
        f"{dev}/nvidia-caps/nvidia-cap1",
        f"{dev}/nvidia-caps/nvidia-cap2",
    ]


def test_a_job_sees_only_the_gpus_it_was_given(tmp_path: Path) -> None:
    """On a node of two GPUs, a job given the second gets its device file alone and
    CUDA_VISIBLE_DEVICES naming it (by UUID: indices are renumbered in the container)."""
    from pilot.payload import container_request
    from protocol.pilot import JobSpec

    proc, dev = fake_driver(tmp_path, {"0000:3b:00.0": 3, "0000:86:00.0": 1})
    node = parse(TWO_GPUS_BY_BUS, proc)
    given = node[1:]
    assert device_nodes(given, dev) == [f"{dev}/nvidiactl", f"{dev}/nvidia-uvm", f"{dev}/nvidia1"]
    spec = JobSpec.model_validate(
        {
            "job_id": 1, "task_id": 1, "job_index": 0, "attempt_nr": 1, "owner": "alice",
            "out_ds": "user.alice.x", "image": "base", "transform": "runcontainer",
            "exec": "true", "cores": 1, "memory_mb": 1000, "walltime_s": 60, "gpus": 1,
        }
    )  # fmt: skip
    request = container_request(spec, tmp_path, tmp_path / "w", given, tmp_path / "cache")
    assert request.gpu and request.env["CUDA_VISIBLE_DEVICES"] == node[1].uuid


def test_driver_libraries_from_ldconfig() -> None:
    listing = """\
\tlibcuda.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcuda.so.1
\tlibcuda.so.1 (libc6) => /usr/lib/i386-linux-gnu/libcuda.so.1
\tlibnvidia-ml.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1
\tlibnvidia-ptxjitcompiler.so.1 (libc6,x86-64) => /usr/lib/libnvidia-ptxjitcompiler.so.1
\tlibc.so.6 (libc6,x86-64) => /lib/x86_64-linux-gnu/libc.so.6
"""
    assert driver_libraries(listing) == [
        "/usr/lib/libnvidia-ptxjitcompiler.so.1",
        "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
        "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
    ]


def test_gpu_command_lines(tmp_path: Path) -> None:
    image = tmp_path / "rootfs"
    (image / "usr" / "local" / "nvidia").mkdir(parents=True)
    request = ContainerRequest(
        image=image,
        argv=["python3", "fit.py"],
        workdir=tmp_path / "w",
        transforms_dir=tmp_path / "t",
        gpu=True,
        devices=["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia0"],
        gpu_libraries=["/usr/lib/x86_64-linux-gnu/libcuda.so.1"],
        env={"CUDA_VISIBLE_DEVICES": "GPU-1"},
    )
    bwrap = " ".join(BubblewrapRuntime().command(request))
    for expected in (
        "--dev-bind /dev/nvidia0 /dev/nvidia0",
        "--dev-bind /dev/nvidiactl /dev/nvidiactl",
        "--tmpfs /usr/local/nvidia",
        "--ro-bind /usr/lib/x86_64-linux-gnu/libcuda.so.1 /usr/local/nvidia/lib64/libcuda.so.1",
        "--setenv LD_LIBRARY_PATH /usr/local/nvidia/lib64",
        "--setenv CUDA_VISIBLE_DEVICES GPU-1",
    ):
        assert expected in bwrap
    apptainer = ApptainerRuntime().command(request)
    assert "--nv" in apptainer and "--dev-bind" not in apptainer
    cpu = " ".join(
        BubblewrapRuntime().command(
            ContainerRequest(image=image, argv=["true"], workdir=tmp_path, transforms_dir=tmp_path)
        )
    )
    assert "nvidia" not in cpu


# -- end to end --------------------------------------------------------------------

GPU_QUEUES = """
[queues.ANALY_CPU]
provider = "local"
maxWorkers = 0

[queues.ANALY_GPU]
provider = "local"
maxWorkers = 0
gpus = 1

[[queues.ANALY_GPU.gpu_nodes]]
model = "NVIDIA A100-SXM4-40GB"
vram_mb = 40960
cuda = "12.4"
driver = "550.54.15"
microarchitecture = "Ampere"
"""


@pytest.mark.e2e
def test_gpu_jobs_wait_for_a_gpu_pilot(harvester_factory: Callable[..., Harvester]) -> None:
    h = harvester_factory(GPU_QUEUES)
    gpu_task = h.submit(
        "--containerImage",
        "base",
        "--exec",
        'echo "visible=$CUDA_VISIBLE_DEVICES" > gpu.txt',
        "--outputs",
        "gpu.txt",
        "--outDS",
        "user.alice.gpu",
        "--architecture",
        "#&nvidia:vram>=40G:cuda>=12.0",
    )
    cpu_task = h.submit("--containerImage", "base", "--exec", "true", "--outDS", "user.alice.cpu")
    wait_for(lambda: h.task(gpu_task)["job_counts"].get("activated") == 1, 60, "GPU job")
    h.wait_activated(cpu_task, 1)  # submitted second: may be split a cycle later
    assert h.jobs(gpu_task)[0]["queue"] == "ANALY_GPU"
    assert h.jobs(cpu_task)[0]["queue"] == "ANALY_CPU"
    # CPU pilots, one of them on the GPU queue but on a node without GPUs
    h.start_pilot("ANALY_CPU")
    plain = h.start_pilot("ANALY_GPU")
    assert h.wait_task(cpu_task, 60)["status"] == "done"
    plain.wait(timeout=30)
    assert h.jobs(gpu_task)[0]["status"] == "activated", "no GPU on that node: the job waits"
    h.start_pilot("ANALY_GPU", "--nvidia-smi", str(RECORDED))
    assert h.wait_task(gpu_task, 90)["status"] == "done"
    job = h.jobs(gpu_task)[0]
    assert job["gpus"] == 1
    ran_on = job["metrics"]["gpus"]
    # the node has two GPUs; the job asked for one and was given one: the first
    assert [(g["name"], g["uuid"]) for g in ran_on] == [
        ("NVIDIA A100-SXM4-40GB", "GPU-1c8e3d8f-6b1a-4a3e-9d2c-8f1b2a3c4d5e")
    ]
    log = h.pbook("results", str(gpu_task), "--json")
    assert json.loads(log.stdout)["files"], log.output
    out = h.user_dir / "gpu-results"
    assert h.pbook("results", str(gpu_task), "-o", str(out)).returncode == 0
    seen = next(out.iterdir()).read_text().strip()
    assert seen == "visible=GPU-1c8e3d8f-6b1a-4a3e-9d2c-8f1b2a3c4d5e", "only the GPU it was given"


@pytest.mark.e2e
def test_gpu_submission_errors(harvester_factory: Callable[..., Harvester]) -> None:
    h = harvester_factory(GPU_QUEUES)
    for architecture, message in (
        ("amd-gpu", "no queue has a amd GPU"),
        ("#&nvidia:vram>=lots", "invalid vram"),
        ("#&nvidia:", "is not 'key>=value'"),
    ):
        result = h.pcontainer(
            "--containerImage",
            "base",
            "--exec",
            "true",
            "--outDS",
            "user.alice.bad",
            "--architecture",
            architecture,
        )
        assert result.returncode == 2 and message in result.stderr, result.output
    assert h.query("SELECT count(*) FROM tasks")[0][0] == 0


GPU_CHECK = Path(__file__).resolve().parent.parent / "bench" / "gpu_check.sh"


def _gpu_check(tmp_path: Path, python: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "HPCAF_GPU_PYTHON": python,
        "HPCAF_GPU_CARRY": str(tmp_path / "carry"),  # nothing carried
        "TMPDIR": str(tmp_path),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    }
    return subprocess.run(
        ["bash", str(GPU_CHECK), *args], env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.e2e
def test_the_gpu_check_runs_in_its_cpu_mode(tmp_path: Path) -> None:
    """bench/gpu_check.sh --cpu: the first look, the image of the host's software bound
    read-only, a container job and a fit campaign through a harvester and its pilots."""
    import sys

    result = _gpu_check(
        tmp_path, sys.executable, "--cpu", "--sample", "1", "--pallets", "staus/Region-combined"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "missing Python modules: none" in out
    assert "[CpuDevice(id=0)]" in out, "JAX ran inside the container"
    assert "1/1 ok  device cpu" in out
    assert "max |dCLs_obs| CPU batched vs CPU scipy over 1 patches" in out, "both fitters ran"
    assert out.rstrip().endswith("the check passed")


def test_the_gpu_check_says_plainly_what_is_missing(tmp_path: Path) -> None:
    """A Python without the harvester's modules, and no carried wheels: exit 3, naming
    what is missing, before anything starts."""
    bare = subprocess.run(["/usr/bin/python3", "-c", "import fastapi"], capture_output=True)
    if bare.returncode == 0:
        pytest.skip("the system python3 has the harvester's modules: it is no bare machine")
    result = _gpu_check(tmp_path, "/usr/bin/python3", "--cpu", "--sample", "1")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "lacks" in result.stdout and "fastapi" in result.stdout
    assert "--prepare" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
