#!/usr/bin/env python3
"""The GPU check's steps (``bench/gpu_check.sh`` prepares the machine and calls this).

On a machine with an NVIDIA GPU, in a few minutes: the pilot's GPU discovery
against the real ``nvidia-smi``, a bubblewrap container given the GPU's device
files, and the pfit campaigns of the chosen pallets with ``--architecture
nvidia-gpu`` on a GPU queue, each beside the same campaign on CPU slots of the
same machine, once per fitter (``--fitters``: pyhf's scipy fits, and the patches
of a structure fitted together, which is built for a GPU): the device the fits
ran on, the wall times, and the largest |ΔCLs| against the CPU's pyhf fits
(the check fails above 1e-4). ``--cpu`` runs every step but the GPU ones on the CPU
(what the test suite runs, on a sample of patches, to keep the script working
until a GPU is lent).

The image is the machine's own software, bound read-only into the container at
the paths it has on the host, as sites bind software from cvmfs: ``/usr`` and
``/etc`` and the Python stack (its prefix, its base interpreter and the folder
of carried packages), over an empty root with the mount points hpcaf needs.

    --missing   print the Python modules the harvester, pilot and fits lack (stdlib only)
    --run       run the check (what the shell script does once the modules are there)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
NEEDED = (
    "fastapi",
    "uvicorn",
    "sqlalchemy",
    "alembic",
    "pydantic",
    "httpx",
    "typer",
    "rich",
    "stamina",
    "jinja2",
    "prometheus_client",
    "pyhf",
    "jax",
    "scipy",
)
"""What the harvester, the pilot, the clients and the fit transform import."""
GPU_IMAGE = "gpu-host"

AGREEMENT = 1e-4
"""Largest |ΔCLs_obs| allowed between a campaign and the CPU's pyhf fits (the bound of
tests/test_fit_truth.py)."""


def missing_modules() -> list[str]:
    return [name for name in NEEDED if importlib.util.find_spec(name) is None]


def stack_paths() -> list[Path]:
    """The Python stack's folders outside /usr and /etc, bound at the same paths."""
    folders = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}
    folders |= {Path(p).resolve() for p in os.environ.get("PYTHONPATH", "").split(":") if p}
    folders.add(Path(sys.executable).resolve().parent.parent)
    roots = [Path("/usr"), Path("/etc")]
    kept = sorted(
        f
        for f in folders
        if f.is_dir() and not any(f == r or f.is_relative_to(r) for r in roots) and f != REPO
    )
    return [f for f in kept if not any(f != k and f.is_relative_to(k) for k in kept)]


def make_host_image(cache: Path, cpu: bool) -> list[str]:
    """An image of mount points over which the host's software is bound; its binds."""
    root = cache / GPU_IMAGE / "rootfs"
    for folder in ("usr", "etc", "proc", "dev", "tmp", "srv/cache", "srv/transforms", "root"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "srv" / "workDir").mkdir(parents=True, exist_ok=True)
    for link in ("bin", "lib", "lib64", "sbin"):
        if not (root / link).exists() and Path(f"/usr/{link}").is_dir():
            (root / link).symlink_to(f"usr/{link}")
    binds = ["/usr:/usr", "/etc:/etc"]
    for folder in stack_paths():
        (root / folder.relative_to("/")).mkdir(parents=True, exist_ok=True)
        binds.append(f"{folder}:{folder}")
    python_bin = Path(sys.executable).parent
    environment = {
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "PATH": f"{python_bin}:/usr/local/bin:/usr/bin:/bin",
    }
    if os.environ.get("PYTHONPATH"):
        environment["PYTHONPATH"] = os.environ["PYTHONPATH"]
    if cpu:
        environment["JAX_PLATFORMS"] = "cpu"
    metadata = {
        "name": GPU_IMAGE,
        "source": "the host's software bound read-only (bench/gpu_check.py)",
        "environment": environment,
    }
    (cache / GPU_IMAGE / "image.json").write_text(json.dumps(metadata, indent=2))
    return binds


def queue_config(binds: list[str], gpus: list[Any], cpu_slots: int) -> str:
    text = f"""
[queues.ANALY_CPU]
provider = "local"
cores = 1
memory_mb = 4000
maxWorkers = {cpu_slots}
nQueueLimitWorker = {cpu_slots}
maxNewWorkersPerCycle = {cpu_slots}
binds = {json.dumps(binds)}
"""
    if gpus:
        gpu = gpus[0]
        text += f"""
[queues.ANALY_GPU]
provider = "local"
cores = 1
memory_mb = 16000
gpus = 1
maxWorkers = 1
nQueueLimitWorker = 1
maxNewWorkersPerCycle = 1
binds = {json.dumps(binds)}

[[queues.ANALY_GPU.gpu_nodes]]
vendor = "nvidia"
model = {json.dumps(gpu.name)}
vram_mb = {int(gpu.memory_mb)}
"""
    return text


def run_cli(env: dict[str, str], module: str, *args: str, timeout: float = 900) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=env["HPCAF_GPU_CHECK_USER_DIR"],  # pcontainer ships its folder: an empty one
    )
    if proc.returncode != 0:
        raise SystemExit(f"{module} {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def task_id_of(output: str) -> int:
    return int(output.split("jediTaskID=")[1].split()[0])


def container_check(env: dict[str, str], client: Any, gpu: bool) -> None:
    """A plain container job: on the GPU queue nvidia-smi inside bubblewrap with the
    device binds; in CPU mode, JAX's devices inside the same image."""
    command = "nvidia-smi -L" if gpu else "python3 -c 'import jax; print(jax.devices())'"
    site = ["--site", "ANALY_GPU", "--architecture", "nvidia-gpu"] if gpu else []
    out = run_cli(
        env,
        "harvester.client.pcontainer",
        "--containerImage",
        GPU_IMAGE,
        "--exec",
        command,
        "--outDS",
        "user.bench.gpucheck.container",
        *(site or ["--site", "ANALY_CPU"]),
    )
    task_id = task_id_of(out)
    from protocol.states import TASK_TERMINAL

    terminal = {state.value for state in TASK_TERMINAL}
    deadline = time.monotonic() + 300
    while client.task(task_id)["status"] not in terminal:
        if time.monotonic() > deadline:
            raise SystemExit("the container job did not end within 300 s")
        time.sleep(0.5)
    (job,) = client.get(f"/api/v1/tasks/{task_id}/jobs")
    log = client.request("GET", f"/api/v1/jobs/{job['id']}/log").text
    print(f"container job {job['id']} {job['status']} on {job.get('queue')}; its output:")
    for line in log.splitlines()[-6:]:
        print(f"  | {line}")
    if job["status"] != "finished":
        raise SystemExit("the container job failed: the device binds or the image do not work")


def campaign(
    env: dict[str, str], client: Any, folder: Path, names: list[str], gpu: bool, fitter: str
) -> tuple[float, dict[str, Any]]:
    args = ["--pallet", str(folder), "--backend", "jax", "--containerImage", GPU_IMAGE]
    args += ["--fitter", fitter]
    args += (
        ["--site", "ANALY_GPU", "--architecture", "nvidia-gpu"] if gpu else ["--site", "ANALY_CPU"]
    )
    for name in names:
        args += ["--patch", name]
    start = time.time()
    out = run_cli(
        env,
        "harvester.client.pfit",
        *args,
        "--outDS",
        f"user.bench.gpucheck.{'gpu' if gpu else 'cpu'}.{fitter}",
        "--wait",
    )
    wall = time.time() - start
    results = client.get(f"/api/v1/tasks/{task_id_of(out)}/results").get("results") or {}
    return wall, results


def patch_names(folder: Path, sample: int) -> list[str]:
    import gzip

    name = "patchset.json.gz" if (folder / "patchset.json.gz").exists() else "patchset.json"
    opener: Any = gzip.open if name.endswith(".gz") else open
    with opener(folder / name, "rt") as fh:
        names = [p["metadata"]["name"] for p in json.load(fh)["patches"]]
    return names[:sample] if sample else []


def describe(label: str, wall: float, results: dict[str, Any]) -> str:
    devices = sorted({str(e.get("device")) for e in results.values()})
    ok = sum(1 for e in results.values() if e.get("status") == "ok")
    fit_times = [e["Fit-Time"] for e in results.values() if "Fit-Time" in e]
    median = statistics.median(fit_times) if fit_times else float("nan")
    return (
        f"{label:12s} {wall:8.1f} s  {ok}/{len(results)} ok  device {','.join(devices)}  "
        f"median fit {median:.3f} s"
    )


def agree(label: str, results: dict[str, Any], baseline: dict[str, Any], against: str) -> bool:
    """Prints the largest CLs_obs difference from ``baseline`` (the CPU campaign of the
    first fitter, ``against``); whether every patch is there and within :data:`AGREEMENT`."""
    common = [k for k in baseline if "CLs_obs" in baseline[k] and "CLs_obs" in results.get(k, {})]
    delta = max(
        (abs(results[k]["CLs_obs"] - baseline[k]["CLs_obs"]) for k in common),
        default=float("nan"),
    )
    print(f"  max |dCLs_obs| {label} vs {against} over {len(common)} patches: {delta:.2e}")
    return len(common) == len(baseline) and delta <= AGREEMENT


def run(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "bench"))
    from local_harvester import harvester

    from harvester.client.http import HarvesterClient
    from pilot.gpus import discover

    work = Path(args.work).resolve()
    images = work / "images"
    gpus = [] if args.cpu else discover(None, os.environ)
    print("== pilot GPU discovery (nvidia-smi):")
    for gpu in gpus:
        print(f"  {gpu}")
    if not args.cpu and not gpus:
        print("cannot run the GPU steps: the pilot's discovery found no GPU (nvidia-smi)")
        return 4
    if args.cpu:
        print("  (CPU mode: discovery skipped, every step runs on the CPU)")
    binds = make_host_image(images, args.cpu)
    print(f"== image {GPU_IMAGE}: the host's software bound read-only: {', '.join(binds)}")
    os.environ["HPCAF_IMAGE_CACHE"] = str(images)
    home = work / "home"
    home.mkdir(parents=True, exist_ok=True)
    pallets = Path(args.pallets_root)
    user_dir = work / "user"
    user_dir.mkdir(exist_ok=True)
    with harvester(home, queue_config(binds, gpus, args.cpu_slots)) as env:
        env["HPCAF_GPU_CHECK_USER_DIR"] = str(user_dir)
        with HarvesterClient(env["HPCAF_URL"], env["HPCAF_TOKEN"]) as client:
            print("== a container with the device binds:")
            container_check(env, client, gpu=bool(gpus))
            failed = False
            for pallet in args.pallets.split(","):
                folder = pallets / pallet
                names = patch_names(folder, args.sample)
                shown = f"{len(names)} patches" if names else "all patches"
                print(f"== pallet {pallet} ({shown}):")
                fitters = args.fitters.split(",")
                against = f"CPU {fitters[0]}"
                baseline: dict[str, Any] = {}
                for fitter in fitters:
                    cpu_wall, cpu_results = campaign(env, client, folder, names, False, fitter)
                    print("  " + describe(f"CPU {fitter}", cpu_wall, cpu_results))
                    failed |= any(e.get("status") != "ok" for e in cpu_results.values())
                    if fitter == fitters[0]:
                        baseline = cpu_results
                    else:
                        failed |= not agree(f"CPU {fitter}", cpu_results, baseline, against)
                    if gpus:
                        gpu_wall, gpu_results = campaign(env, client, folder, names, True, fitter)
                        print("  " + describe(f"GPU {fitter}", gpu_wall, gpu_results))
                        failed |= not agree(f"GPU {fitter}", gpu_results, baseline, against)
                        devices = {e.get("device") for e in gpu_results.values()}
                        failed |= devices != {"gpu"}
    if failed:
        print("the check FAILED: see above (a fit that was not ok, or GPU fits not on the GPU)")
        return 1
    print("the check passed")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--missing", action="store_true")
    parser.add_argument("--run", action="store_true")
    parser.add_argument("--cpu", action="store_true", help="CPU mode: no GPU step")
    parser.add_argument("--work", default=None, help="a scratch folder")
    parser.add_argument("--pallets", default="staus/Region-combined,1Lbb")
    parser.add_argument(
        "--pallets-root",
        default=os.environ.get("HPCAF_PALLETS") or str(REPO.parent / "shared/data/pallets"),
    )
    parser.add_argument(
        "--fitters",
        default="scipy,batched",
        help="pfit --fitter values, each run on the CPU and the GPU (the first is the baseline)",
    )
    parser.add_argument("--sample", type=int, default=0, help="fit the first N patches only")
    parser.add_argument("--cpu-slots", type=int, default=2, help="CPU pilots beside the GPU one")
    args = parser.parse_args()
    if args.missing:
        print(" ".join(missing_modules()))
        return 0
    if args.run:
        if args.work is None:
            parser.error("--run needs --work")
        return run(args)
    parser.error("give --missing or --run")
    return 2


if __name__ == "__main__":
    sys.exit(main())
