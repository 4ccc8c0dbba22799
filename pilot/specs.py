"""Reading the jobs of an acquire reply, once, into protocol's ``JobSpec``.

The pilot reads each job where it arrives and passes the typed spec on, so no
other module looks up a key or repeats a default (the defaults live in
``JobSpec``). A job the pilot cannot read is not run: it comes back as an
``UnreadableJob`` that the pilot reports failed, rather than an exception in
the middle of the job loop that would end the pilot with the job still held.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from protocol.bodies import MAX_ID
from protocol.pilot import JobSpec

MAX_PROBLEM_CHARS = 1000


@dataclass(frozen=True)
class UnreadableJob:
    """A job the server sent whose specification this pilot cannot read."""

    job_id: int | None
    """Its id when the spec names a valid one (then the job can be reported failed)."""
    problem: str


def read_job(raw: Any) -> JobSpec | UnreadableJob:
    """One job of an acquire reply, as the server sent it (decoded JSON)."""
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as exc:
        return UnreadableJob(_job_id(raw), _problem(exc))


def _job_id(raw: Any) -> int | None:
    job_id = raw.get("job_id") if isinstance(raw, dict) else None
    if isinstance(job_id, int) and not isinstance(job_id, bool) and 1 <= job_id <= MAX_ID:
        return job_id
    return None


def _problem(exc: ValidationError) -> str:
    """Which fields are wrong and how, without their values (the server refuses NULs)."""
    parts = [
        f"{'.'.join(str(p) for p in error['loc']) or 'the spec'}: {error['msg']}"
        for error in exc.errors()
    ]
    return "; ".join(parts).replace("\x00", "")[:MAX_PROBLEM_CHARS]
