"""hpcaf's Python API: tasks from a notebook or a script.

    import hpcaf
    client = hpcaf.Client()
    task = client.submit_container(containerImage="base", exec="echo hi > o.txt",
                                   outputs=["o.txt"])
    task.wait()
    task.results(dest="out")

    with hpcaf.Executor(site="ANALY_LOCAL", containerImage="pyhf") as ex:
        print(list(ex.map(pow, [2, 3], [5, 5])))

It needs only the client part of hpcaf (``pip install hpcaf``): no server
library (FastAPI, SQLAlchemy, Alembic, uvicorn, Optuna) is imported.
"""

from hpcaf.client import Client, Results, Task, TaskFailed
from hpcaf.errors import (
    ClientError,
    JobFailed,
    PayloadTooLarge,
    RemoteError,
    ResultTooLarge,
    SerializationError,
)
from hpcaf.executor import CallFuture, Executor

__all__ = [
    "CallFuture",
    "Client",
    "ClientError",
    "Executor",
    "JobFailed",
    "PayloadTooLarge",
    "RemoteError",
    "ResultTooLarge",
    "Results",
    "SerializationError",
    "Task",
    "TaskFailed",
]
