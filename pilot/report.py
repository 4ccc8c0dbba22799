"""A job's final report: its outcome and its log in one ``update_job`` body.

Every way a job ends, unreadable specs included, goes through here, so every
job gets exactly one final report of the same shape.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pilot.gpus import Gpu
from pilot.link import HarvesterLink, ServerError
from pilot.outcome import LOG_NAME, Outcome
from pilot.stage import Carry, report_entry
from protocol.error_codes import PilotErrorCode

log = logging.getLogger(__name__)


def final_report(
    server: HarvesterLink,
    job_id: int,
    outcome: Outcome,
    workdir: Path | None,
    gpus: list[Gpu] | None,
    carry: Carry | None = None,
) -> dict[str, Any]:
    """The final ``update_job`` body, with the payload log of ``workdir`` if there is one
    (carried in the body when small, else uploaded first).

    ``gpus``, for a GPU job, are the node's GPUs as the job leaves them (the
    server keeps them as the job's metrics).
    """
    body: dict[str, Any] = {"state": outcome.state, "exit_code": outcome.exit_code}
    metrics = dict(outcome.metrics or {})
    if gpus is not None:
        metrics["gpus"] = [g.report() for g in gpus]
    if metrics:
        body["metrics"] = metrics
    log_path = workdir / LOG_NAME if workdir is not None else None
    if log_path is not None and log_path.is_file() and not log_path.is_symlink():
        try:
            body["log"] = report_entry(server, log_path, LOG_NAME, carry)
        except (ServerError, OSError) as exc:
            log.warning("job %s: log upload failed: %s", job_id, exc)
    body["outputs"] = outcome.outputs or []
    if outcome.state != "finished":
        body["pilot_error_code"] = int(outcome.error_code or PilotErrorCode.UNKNOWN)
        body["pilot_error_diag"] = outcome.diagnostics
    return body
