"""A task's results as the API answers them (``GET /api/v1/tasks/{id}/results``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ResultFile(BaseModel):
    """One output file of a task, registered in its output dataset."""

    name: str
    sha256: str
    size: int
    job_id: int | None = None
    job_index: int | None = None
    content_b64: str | None = None
    """The content itself (base64), where the caller asked for small outputs inline
    (``/tasks/{id}/endings?inline_max=``): one request less per job."""


class TaskResults(BaseModel):
    """The outputs of a task, and for fit tasks the CLs per patch merged over its jobs."""

    model_config = ConfigDict(populate_by_name=True)

    task_id: int = Field(alias="jediTaskID")
    status: str
    kind: str
    out_ds: str = Field(alias="outDS")
    files: list[ResultFile] = Field(default_factory=list)
    results: dict[str, Any] | None = None
    """Fit tasks: ``{patch: {metadata, CLs_obs, CLs_exp, …}}``."""
