"""``pfit``: fit every signal patch of a published pallet as one task.

The background-only workspace and the patchset are validated here (pyhf
schema, patchset digest against the workspace, patch names, test
statistic; once per content, ``pallet_check.py``), uploaded only when the
harvester does not hold them yet (content-addressed: a second campaign on the
same pallet sends nothing), and submitted as a task whose jobs each fit a
group of patches with the ``pyhf_fit`` transform.
"""

from __future__ import annotations

import hashlib
import math
import os
import tarfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from harvester.client.common import client, err, fail, optional, out, split_list
from harvester.client.pallet_check import CheckedPallet, PalletFile, check_pallet
from harvester.client.task_options import task_parameters
from harvester.client.tasks import draw_plot, print_fit_table, wait_for_task

app = typer.Typer(add_completion=False, help="Fit the signal patches of a pyhf pallet as a task.")

TEST_STATISTICS = ("qtilde", "q")
BACKENDS = ("numpy", "jax")
PATCHSET_NAMES = ("patchset.json", "patchset.json.gz")


def pallet_files(pallet: str, cache: Path) -> tuple[Path, Path]:
    """BkgOnly.json and the patchset from a pallet folder, tarball or URL (cached)."""
    source = Path(pallet)
    if pallet.startswith(("http://", "https://")):
        folder = cache / hashlib.sha256(pallet.encode()).hexdigest()[:16]
        if not folder.exists():
            contrib = optional("pyhf.contrib.utils", "fit", "pfit (it downloads pallets with pyhf)")
            contrib.download(pallet, str(folder))
        source = folder
    elif source.is_file() and tarfile.is_tarfile(source):
        digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
        folder = cache / digest
        if not folder.exists():
            tmp = folder.with_suffix(".part")
            with tarfile.open(source) as tar:
                tar.extractall(tmp, filter="data")
            tmp.rename(folder)
        source = folder
    if not source.is_dir():
        raise fail(f"--pallet {pallet}: not a folder, a tarball or a URL")
    workspaces = sorted(source.rglob("BkgOnly.json"))
    combined = [w for w in workspaces if "combined" in w.parent.name.lower()]
    if len(workspaces) > 1 and len(combined) == 1:
        workspaces = combined  # HEPData pallets with regions: the combined fit
    if len(workspaces) != 1:
        raise fail(
            f"--pallet {pallet}: expected one BkgOnly.json, found {len(workspaces)}; "
            "give --workspace and --patchset"
        )
    folder = workspaces[0].parent
    for name in PATCHSET_NAMES:
        if (folder / name).is_file():
            return workspaces[0], folder / name
    raise fail(f"--pallet {pallet}: no patchset.json next to {workspaces[0]}")


def group(names: list[str], per_job: int) -> list[dict[str, Any]]:
    return [{"patches": names[i : i + per_job]} for i in range(0, len(names), per_job)]


FIRST_JOB_SHARE = 4
"""The first job of a campaign split automatically holds a quarter of a job's patches:
the first CLs come back after a few fits, not after a whole job."""


def online_slots(c: Any, site: str | None) -> int:
    """The slots of the online queues the task may go to (at least one)."""
    named = set(split_list(site)) - {"AUTO"}
    slots = sum(
        int(q["config"].get("maxWorkers", 0))
        for q in c.get("/api/v1/queues")
        if q["status"] == "online" and (not named or q["name"] in named)
    )
    return max(slots, 1)


def auto_groups(names: list[str], slots: int) -> list[dict[str, Any]]:
    """The jobs of a campaign no ``--patchesPerJob`` sizes.

    Two jobs per slot, as even as their count allows, so a warm worker's
    compilations serve several jobs and the slots end together; none larger than
    that share, since a job's patches are aligned into one model and larger jobs
    build larger models. Before them, where there are enough patches, one small job
    (jobs are dispatched in order): the first CLs come back after a few fits. Its
    patches are taken from the last job, which the slot that ran the small job
    takes at the end, so the slots still end together (taken from every job alike,
    that slot ended a small job's time after the other).
    """
    shares = 2 * slots
    per_job = max(1, math.ceil(len(names) / shares))
    first = per_job // FIRST_JOB_SHARE
    if first < 1:
        return group(names, per_job)
    size, extra = divmod(len(names), shares)
    widths = [size + (1 if index < extra else 0) for index in range(shares)]
    widths = [first, *widths[:-1], widths[-1] - first]
    jobs, at = [], 0
    for width in widths:
        jobs.append({"patches": names[at : at + width]})
        at += width
    return jobs


@app.command()
def main(
    workspace: Annotated[Path | None, typer.Option("--workspace", help="BkgOnly.json")] = None,
    patchset: Annotated[
        Path | None, typer.Option("--patchset", help="patchset.json or patchset.json.gz")
    ] = None,
    pallet: Annotated[
        str | None,
        typer.Option(
            "--pallet", help="a pallet folder, tarball or HEPData URL (instead of the two above)"
        ),
    ] = None,
    patch: Annotated[
        list[str] | None, typer.Option("--patch", help="fit only this patch (repeatable)")
    ] = None,
    poi_value: Annotated[float, typer.Option("--poi-value", help="signal strength tested")] = 1.0,
    test_stat: Annotated[str, typer.Option("--test-stat", help="qtilde or q")] = "qtilde",
    backend: Annotated[str, typer.Option("--backend", help="numpy or jax")] = "jax",
    fitter: Annotated[
        str,
        typer.Option(
            "--fitter",
            help="scipy: each patch's fits one at a time, as pyhf; batched: the patches of "
            "one structure fitted together inside JAX (jax only)",
        ),
    ] = "scipy",
    patches_per_job: Annotated[
        int | None,
        typer.Option(
            "--patchesPerJob", help="patches fitted by one job (default: about two jobs per slot)"
        ),
    ] = None,
    site: Annotated[
        str | None, typer.Option("--site", help="queue(s) to run on, comma-separated")
    ] = None,
    architecture: Annotated[str | None, typer.Option("--architecture")] = None,
    container_image: Annotated[
        str, typer.Option("--containerImage", help="the fit image")
    ] = "pyhf",
    out_ds: Annotated[
        str | None, typer.Option("--outDS", help="output dataset (default user.<you>.pfit.<time>)")
    ] = None,
    max_attempt: Annotated[int, typer.Option("--maxAttempt")] = 3,
    wait: Annotated[bool, typer.Option("--wait", help="wait and print the results")] = False,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="with --wait: draw the exclusion plot to this PNG")
    ] = None,
    timeout: Annotated[
        float, typer.Option(help="--wait gives up after this many seconds")
    ] = 7200.0,
    adaptive: Annotated[
        bool,
        typer.Option(
            "--adaptive",
            help="fit a coarse subset, then only patches near the CLs = 0.05 contour",
        ),
    ] = False,
    initial_patches: Annotated[
        int | None,
        typer.Option("--initialPatches", help="--adaptive: size of the coarse first subset"),
    ] = None,
    n_parallel: Annotated[
        int, typer.Option("--nParallelEvaluation", help="--adaptive: fits running at once")
    ] = 8,
) -> None:
    """Submit one fit task for a pallet; prints jediTaskID=<id>."""
    if test_stat not in TEST_STATISTICS:
        raise fail(
            f"--test-stat {test_stat!r} is not one pyhf's hypotest knows "
            f"({', '.join(TEST_STATISTICS)})"
        )
    if backend not in BACKENDS:
        raise fail(f"--backend must be one of {', '.join(BACKENDS)}")
    if patches_per_job is not None and patches_per_job < 1:
        raise fail("--patchesPerJob must be at least 1")
    if adaptive and patches_per_job not in (None, 1):
        raise fail("--adaptive fits one patch per job; leave out --patchesPerJob")
    if initial_patches is not None and initial_patches < 1:
        raise fail("--initialPatches must be at least 1")
    if n_parallel < 1:
        raise fail("--nParallelEvaluation must be at least 1")
    cache = Path(os.environ.get("HPCAF_PALLET_CACHE") or Path.home() / ".cache" / "hpcaf")
    if pallet is not None:
        workspace, patchset = pallet_files(pallet, cache / "pallets")
    if workspace is None or patchset is None:
        raise fail("give --workspace and --patchset (or --pallet)")
    ws_file = PalletFile.read(workspace, "--workspace")
    ps_file = PalletFile.read(patchset, "--patchset")
    checked = check_pallet(ws_file, ps_file, cache)
    names = checked.chosen(list(patch or []))
    with client() as c:
        me = out_ds
        if me is None:
            me = f"user.{_whoami(c)}.pfit.{int(time.time())}"
        ps_name = "patchset.json.gz" if patchset.name.endswith(".gz") else "patchset.json"
        for file, name in ((ws_file, "BkgOnly.json"), (ps_file, ps_name)):
            if not c.holds(file.sha256):  # a pallet the harvester holds is not sent again
                c.upload_bytes(file.raw, name)
        steering = None
        if adaptive:  # its jobs are made by the harvester as the scan goes
            steering = adaptive_steering(checked, names, initial_patches, n_parallel)
            job_parameters = []
        elif patches_per_job is None:
            job_parameters = auto_groups(names, online_slots(c, site))
        else:
            job_parameters = group(names, patches_per_job)
        params = {
            **task_parameters(
                taskName=f"pfit {workspace.parent.name or workspace.name} ({len(names)} patches)",
                containerImage=container_image,
                outDS=me,
                outputs=["results.json"],
                site=site,
                architecture=architecture,
                maxAttempt=max_attempt,
            ),
            "transform": "pyhf_fit",
            "inputs": [
                {"name": "BkgOnly.json", "sha256": ws_file.sha256},
                {"name": ps_name, "sha256": ps_file.sha256},
            ],
            "jobParameters": job_parameters or None,
            "steering": steering,
            "transformArgs": {
                "workspace": "BkgOnly.json",
                "patchset": ps_name,
                "poi_value": poi_value,
                "test_stat": test_stat,
                "backend": backend,
                "fitter": fitter,
                "labels": checked.labels or None,
                "require_gpu": _wants_gpu(architecture),
            },
        }
        reply = c.submit_task({k: v for k, v in params.items() if v is not None})
        task_id = reply["jediTaskID"]
        print(f"jediTaskID={task_id}", flush=True)
        if steering is not None:
            err.print(
                f"adaptive scan of {len(names)} patches: {steering['initial']} first, then "
                f"those near CLs = 0.05, {n_parallel} at a time; backend {backend}, outDS {me}"
            )
        else:
            err.print(
                f"{len(names)} patches in {len(job_parameters)} jobs "
                f"(up to {max(len(j['patches']) for j in job_parameters)} per job), "
                f"backend {backend}, outDS {me}"
            )
        if not wait:
            return
        task = wait_for_task(c, task_id, timeout)
        document = c.get(f"/api/v1/tasks/{task_id}/results")
        task_params = c.task(task_id).get("params") or {}
    fit = document.get("results") or {}
    print_fit_table(fit)
    if adaptive:
        fitted = sum(1 for e in fit.values() if e.get("status") == "ok")
        out.print(f"adaptive scan: {fitted} fits for {len(names)} patches")
    out.print(f"task {task_id} {task['status']}")
    if plot is not None:
        draw_plot(fit, plot, task_params, task_id)
    if task["status"] != "done":
        raise typer.Exit(1)


def adaptive_steering(
    checked: CheckedPallet, names: list[str], initial: int | None, parallel: int
) -> dict[str, Any]:
    """Steering of an adaptive scan: each patch's coordinates from its metadata values."""
    points = {name: checked.patches[name] for name in names}
    if len(points) < 2:
        raise fail("--adaptive needs at least two patches")
    if any(not 1 <= len(v) <= 3 or any(math.isnan(x) for x in v) for v in points.values()):
        raise fail("--adaptive needs patches with 1 to 3 numeric metadata values")
    steering: dict[str, Any] = {
        "kind": "adaptive_cls",
        "points": points,
        "initial": min(initial or max(4, len(points) // 4), len(points)),
        "nParallelEvaluation": parallel,
    }
    return steering


def _wants_gpu(architecture: str | None) -> bool | None:
    from harvester.architecture import parse_architecture
    from harvester.errors import InvalidRequest

    try:
        return parse_architecture(architecture).needs_gpu or None
    except InvalidRequest as exc:
        raise fail(f"--architecture: {exc}") from exc


def _whoami(c: Any) -> str:
    return str(c.get("/api/v1/whoami")["user"])


def run() -> None:
    app()


if __name__ == "__main__":
    run()
