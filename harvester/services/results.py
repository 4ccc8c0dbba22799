"""A task's results: its registered outputs, and merged payload results by task kind."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from db.models import FileKind, Task
from harvester.context import HarvesterContext
from harvester.json_documents import load_object
from harvester.services.lifecycle import current_attempts
from harvester.services.tasks import task_files
from protocol.states import JobStatus

FIT_RESULTS_FILE = "results.json"


def task_results(session: Session, ctx: HarvesterContext, task: Task) -> dict[str, Any]:
    """Outputs per job; fit tasks add the per-patch results merged over their jobs."""
    outputs = task_files(session, task.id, FileKind.OUTPUT)
    jobs = {j.id: j for j in current_attempts(session, task.id)}
    document: dict[str, Any] = {
        "jediTaskID": task.id,
        "status": task.status.value,
        "kind": task.kind,
        "outDS": task.out_ds,
        "files": [
            {
                "name": f.name,
                "sha256": f.sha256,
                "size": f.size,
                "job_id": f.job_id,
                "job_index": jobs[f.job_id].job_index if f.job_id in jobs else None,
            }
            for f in outputs
        ],
    }
    if task.kind == "pyhf_fit":
        document["results"] = _merge_fit_results(ctx, task, outputs, list(jobs.values()))
    return document


def _merge_fit_results(
    ctx: HarvesterContext, task: Task, outputs: list[Any], jobs: list[Any]
) -> dict[str, Any]:
    """``{patch: {metadata, CLs_obs, CLs_exp, Fit-Time, …}}`` in the demonstration's shape.

    A patch whose job produced no results (it failed, or is still running) is
    listed with its status and the job's diagnostics, so nothing is silently lost.
    """
    merged: dict[str, Any] = {}
    for f in outputs:
        if not f.name.endswith("." + FIT_RESULTS_FILE):
            continue
        try:  # the transform's output; one that cannot be served is left out
            merged.update(load_object(ctx.files.path(f.sha256), f.name))
        except (OSError, ValueError):
            continue
    for job in jobs:
        for name in (job.spec.get("parameters") or {}).get("patches", []):
            if name in merged:
                continue
            entry: dict[str, Any] = {"status": job.status.value}
            if job.status is JobStatus.FAILED:
                entry["status"] = "failed"
                entry["message"] = job.pilot_error_diag
            merged[name] = entry
    return dict(sorted(merged.items()))
