"""What the Python API raises, in one place (as pyhf keeps its exceptions).

``ClientError`` (a refused or unreachable call: its message is the harvester's)
and ``TaskFailed`` come from the command-line clients' layer; the rest belong to
function calls run through :class:`hpcaf.Executor`.
"""

from __future__ import annotations

from harvester.client.http import ClientError


class SerializationError(ClientError):
    """A function or its arguments cannot be sent (``submit`` raises it; nothing was sent)."""


class PayloadTooLarge(ClientError):
    """A call's pickled function and arguments are over the executor's limit."""


class ResultTooLarge(Exception):
    """A call's pickled result was over the limit; raised by ``future.result()``."""


class RemoteError(Exception):
    """A call raised an exception that could not be rebuilt here (its class is not
    importable on this side, or it does not pickle); its type, message and remote
    traceback as text."""

    def __init__(self, type_name: str, message: str, remote_traceback: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.remote_traceback = remote_traceback


class JobFailed(Exception):
    """The job running a call failed after the task's retries (the pilot died, the
    container could not start, the walltime ran out …): the pilot's error code and
    message, as ``pbook show`` prints them."""

    def __init__(self, task_id: int, job_id: int, code: int | None, message: str | None) -> None:
        super().__init__(
            f"job {job_id} of task {task_id} failed"
            + (f" with pilot error {code}" if code is not None else "")
            + (f": {message}" if message else "")
        )
        self.task_id = task_id
        self.job_id = job_id
        self.code = code
        self.diagnostic = message


__all__ = [
    "ClientError",
    "JobFailed",
    "PayloadTooLarge",
    "RemoteError",
    "ResultTooLarge",
    "SerializationError",
]
