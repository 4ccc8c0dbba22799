"""How a job ended, and what its payload's exit code tells the server.

Every way a job ends is one ``Outcome``: finished with its outputs, or failed
with a pilot error code and diagnostics. The exit codes read here are the
transforms' side of the contract (65: bad input, 66: no GPU visible); the
codes for a kill, the walltime or a lost worker are decided by the supervisor
(``pilot/supervision.py``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol.error_codes import PilotErrorCode

LOG_NAME = "payload.log"
"""The payload's output in its work dir, uploaded as the job's log however it ends."""
EXIT_BAD_INPUT = 65  # EX_DATAERR: the transform says a new attempt cannot help
EXIT_NO_GPU = 66  # the transform needed a GPU and the container did not show it one


@dataclass
class Outcome:
    state: str
    exit_code: int | None = None
    error_code: PilotErrorCode | None = None
    diagnostics: str | None = None
    outputs: list[dict[str, Any]] | None = None
    metrics: dict[str, Any] | None = None
    """What the server keeps of how the job ran (a multi-node job's ranks)."""


def payload_failed(
    code: int, elapsed_s: float, workdir: Path, outputs: list[dict[str, Any]]
) -> Outcome:
    """A payload that exited non-zero on its own: why, in the transform's words if it left some."""
    diagnostics = f"payload exited with code {code} after {elapsed_s:.1f}s"
    message = _report_message(workdir)
    if message:
        diagnostics += f": {message}"
    return Outcome(
        "failed",
        exit_code=code,
        error_code=_classify(code, workdir),
        diagnostics=diagnostics,
        outputs=outputs,
    )


def _report_message(workdir: Path, limit: int = 1000) -> str | None:
    """The transform's own account of a failure (``exitMsg`` of jobReport.json, as in PanDA)."""
    path = workdir / "jobReport.json"
    if not path.is_file() or path.is_symlink() or path.stat().st_size > 1 << 20:
        return None
    try:
        report = json.loads(path.read_text(errors="replace"))
    except ValueError:
        return None
    message = report.get("exitMsg") if isinstance(report, dict) else None
    if not isinstance(message, str) or message in ("", "OK"):
        return None
    return message.replace("\x00", "")[:limit]  # the server refuses NULs in text


def _classify(code: int, workdir: Path) -> PilotErrorCode:
    """Exit 65 means bad input (no retry); a runtime failure before the payload is a
    container error; anything else is a payload failure."""
    if code == EXIT_BAD_INPUT:
        return PilotErrorCode.PAYLOAD_BAD_INPUT
    if code == EXIT_NO_GPU:
        return PilotErrorCode.GPU_NOT_VISIBLE
    try:
        text = (workdir / LOG_NAME).read_text(errors="replace")
    except OSError:
        return PilotErrorCode.PAYLOAD_FAILED
    if "=== runcontainer:" not in text and ("bwrap:" in text or "FATAL:" in text):
        return PilotErrorCode.CONTAINER_FAILED
    return PilotErrorCode.PAYLOAD_FAILED
