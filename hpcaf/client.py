"""Tasks from Python: submit, follow, fetch, as typed objects rather than raw replies.

The same calls as the command-line clients (over :class:`HarvesterClient`, with its
retries through harvester restarts), for notebooks and scripts::

    client = hpcaf.Client()                      # HPCAF_URL / HPCAF_TOKEN, or arguments
    task = client.submit_container(containerImage="base", exec="echo hi > o.txt",
                                   outputs=["o.txt"])
    task.wait()
    for path in task.results(dest="out").paths: ...
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harvester.client.common import split_list
from harvester.client.http import ClientError, HarvesterClient
from protocol.jobs import JobPublic
from protocol.results import TaskResults
from protocol.states import TASK_TERMINAL, TaskStatus
from protocol.tasks import TaskPublic


class TaskFailed(ClientError):
    """:meth:`Task.wait` with ``check=True``: the task ended other than ``done``."""

    def __init__(self, task: TaskPublic) -> None:
        why = f": {task.error_dialog}" if task.error_dialog else ""
        super().__init__(f"task {task.id} ended {task.status.value}{why}")
        self.task = task


@dataclass
class Results:
    """A task's results; ``paths`` are the files downloaded by :meth:`Task.results`."""

    document: TaskResults
    paths: list[Path] = field(default_factory=list)

    @property
    def fits(self) -> dict[str, Any] | None:
        """Fit tasks: CLs per patch, as ``pbook results --json`` prints them."""
        return self.document.results


class Task:
    """A submitted task; every property asks the harvester afresh."""

    def __init__(self, client: Client, task_id: int) -> None:
        self.client = client
        self.id = task_id

    def __repr__(self) -> str:
        return f"<hpcaf.Task {self.id}>"

    def info(self) -> TaskPublic:
        """The task as the harvester shows it now (state, job counts, errors)."""
        return TaskPublic.model_validate(self.client.http.task(self.id))

    @property
    def status(self) -> TaskStatus:
        return self.info().status

    def jobs(self, *, all_attempts: bool = False) -> list[JobPublic]:
        replies = self.client.http.jobs(self.id, all_attempts=all_attempts)
        return [JobPublic.model_validate(job) for job in replies]

    def wait(
        self, timeout: float | None = None, *, poll_s: float = 2.0, check: bool = False
    ) -> TaskPublic:
        """Block until the task ends; its final state. ``TimeoutError`` after ``timeout``
        seconds; with ``check``, :class:`TaskFailed` unless it ended ``done``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            info = self.info()
            if info.status in TASK_TERMINAL:
                if check and info.status is not TaskStatus.DONE:
                    raise TaskFailed(info)
                return info
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"task {self.id} is still {info.status.value}")
            time.sleep(poll_s)

    def results(self, dest: str | Path | None = None) -> Results:
        """The task's output files (and fit results); with ``dest``, downloaded there,
        each checked against its sha256."""
        document = TaskResults.model_validate(
            self.client.http.get(f"/api/v1/tasks/{self.id}/results")
        )
        found = Results(document)
        if dest is not None:
            folder = Path(dest)
            folder.mkdir(parents=True, exist_ok=True)
            for item in document.files:
                target = folder / item.name
                self.client.http.download(item.sha256, target)
                found.paths.append(target)
        return found

    def kill(self) -> TaskPublic:
        return TaskPublic.model_validate(self.client.http.post(f"/api/v1/tasks/{self.id}/kill"))

    def retry(self) -> TaskPublic:
        return TaskPublic.model_validate(self.client.http.post(f"/api/v1/tasks/{self.id}/retry"))


class Client:
    """The harvester, from Python. ``url`` and ``token`` default to ``HPCAF_URL`` and
    ``HPCAF_TOKEN``, as for the command-line clients."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout_s: float = 60.0,
        retry_s: float | None = None,
    ) -> None:
        self.http = HarvesterClient(url, token, timeout_s=timeout_s, retry_s=retry_s)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    @property
    def user(self) -> str:
        return str(self.http.get("/api/v1/whoami")["user"])

    def submit_container(self, **params: Any) -> Task:
        """Submit a task as ``pcontainer`` does, with panda-client's parameter names
        (``containerImage``, ``exec``, ``outputs``, ``nJobs``, ``site``, ``nNodes`` and
        ``coreCount`` for a multi-node job, …). ``outDS``
        defaults to ``user.<you>.<time>``; list-valued options take lists or
        comma-separated strings."""
        document = {"transform": "runcontainer", **params}
        for key in ("outputs", "excludedSite"):
            if isinstance(document.get(key), str):
                document[key] = split_list(document[key])
        if isinstance(document.get("site"), list):
            document["site"] = ",".join(document["site"])
        if not document.get("outDS"):
            document["outDS"] = f"user.{self.user}.{int(time.time() * 1000)}"
        reply = self.http.submit_task(document)
        return Task(self, int(reply["jediTaskID"]))

    def task(self, task_id: int) -> Task:
        return Task(self, task_id)

    def tasks(self, status: str | None = None, limit: int = 20) -> list[TaskPublic]:
        """Your tasks, newest first."""
        page = self.http.get("/api/v1/tasks", status=status, limit=limit)
        return [TaskPublic.model_validate(item) for item in page["items"]]
