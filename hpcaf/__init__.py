"""hpcaf's Python API: tasks from a notebook or a script.

    import hpcaf
    client = hpcaf.Client()
    task = client.submit_container(containerImage="base", exec="echo hi > o.txt",
                                   outputs=["o.txt"])
    task.wait()
    task.results(dest="out")

It needs only the client part of hpcaf (``pip install hpcaf``): no server
library (FastAPI, SQLAlchemy, Alembic, uvicorn, Optuna) is imported.
"""

from harvester.client.http import ClientError
from hpcaf.client import Client, Results, Task, TaskFailed

__all__ = ["Client", "ClientError", "Results", "Task", "TaskFailed"]
