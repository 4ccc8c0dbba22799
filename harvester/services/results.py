"""A task's results: its registered outputs, and merged payload results by task kind."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from db.models import FileKind, Task
from harvester.context import HarvesterContext
from harvester.services.lifecycle import current_attempts
from harvester.services.tasks import task_files


def task_results(session: Session, ctx: HarvesterContext, task: Task) -> dict[str, Any]:
    """Outputs per job; fit and scan tasks add their merged results."""
    outputs = task_files(session, task.id, FileKind.OUTPUT)
    jobs = {j.id: j for j in current_attempts(session, task.id)}
    return {
        "jediTaskID": task.id,
        "status": task.status.value,
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
