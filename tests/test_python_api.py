"""``import hpcaf``: typed tasks from Python, and a client that installs without the server."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import hpcaf
from protocol.states import JobStatus, TaskStatus
from tests.helpers import REPO, Harvester

SERVER_LIBRARIES = ("fastapi", "starlette", "sqlalchemy", "alembic", "uvicorn", "optuna")

BLOCKED_IMPORTS = """
import importlib.abc, sys
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError(f"{{name}} is not installed (blocked by the test)")
sys.meta_path.insert(0, Blocker())
"""


def test_the_base_installation_holds_no_server_library() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    base = " ".join(project["dependencies"]).lower()
    for library in ("fastapi", "sqlalchemy", "alembic", "uvicorn", "optuna", "jinja2"):
        assert library not in base, f"{library} is a base dependency"
    server = " ".join(project["optional-dependencies"]["server"]).lower()
    assert all(lib in server for lib in ("fastapi", "sqlalchemy", "alembic", "uvicorn"))


def _without_server(code: str) -> subprocess.CompletedProcess[str]:
    blocker = BLOCKED_IMPORTS.format(blocked=set(SERVER_LIBRARIES) | {"pydantic_settings"})
    return subprocess.run(
        [sys.executable, "-c", blocker + code],
        capture_output=True, text=True, cwd=REPO, check=False,
    )  # fmt: skip


def test_the_clients_and_the_api_work_without_the_server_libraries() -> None:
    imported = _without_server(
        "import hpcaf, harvester.client.pcontainer, harvester.client.pbook, "
        "harvester.client.pfit, harvester.client.phpo\n"
        "from harvester.client.phpo import app\n"
        "from typer.testing import CliRunner\n"
        "result = CliRunner().invoke(app, ['--help'])\n"
        "assert result.exit_code == 0, result.output\n"
        "print(hpcaf.Client.__name__)\n"
    )
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == "Client"
    harvester = _without_server(
        "import sys; sys.argv = ['harvester', 'serve']\n"
        "from harvester.server_entry import main\n"
        "main()\n"
    )
    assert harvester.returncode == 2
    assert "pip install 'hpcaf[server]'" in harvester.stderr
    assert "Traceback" not in harvester.stderr


@pytest.mark.e2e
def test_a_task_from_python(harvester: Harvester, tmp_path: Path) -> None:
    with hpcaf.Client(harvester.url, harvester.tokens["alice"]) as client:
        task = client.submit_container(
            containerImage="base",
            exec='echo "hi from $HPCAF_JOB_INDEX" > o.txt',
            outputs="o.txt",
            nJobs=2,
        )
        info = task.wait(timeout=120, check=True)
        assert info.status is TaskStatus.DONE and info.out_ds.startswith("user.alice.")
        assert {job.status for job in task.jobs()} == {JobStatus.FINISHED}
        results = task.results(dest=tmp_path / "out")
        texts = sorted(path.read_text().strip() for path in results.paths)
        assert texts == ["hi from 0", "hi from 1"]
        assert results.fits is None and len(results.document.files) == 2

        failing = client.submit_container(containerImage="base", exec="exit 3")
        with pytest.raises(hpcaf.TaskFailed, match=f"task {failing.id} ended failed"):
            failing.wait(timeout=120, check=True)
        assert failing.jobs()[0].exit_code == 3

        with pytest.raises(hpcaf.ClientError, match="not in the image cache") as refused:
            client.submit_container(containerImage="nothing", exec="true")
        assert refused.value.status_code == 400
        assert {t.id for t in client.tasks()} >= {task.id, failing.id}
