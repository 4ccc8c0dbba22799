"""The Alembic migrations build exactly the schema the models declare."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import JSON, column, select, table

from db.engine import make_engine
from db.migrate import alembic_config, upgrade
from db.models import Base, Task, TZDateTime
from harvester.architecture import parse_architecture
from harvester.errors import InvalidRequest
from protocol.tasks import TaskCreate


def test_migrated_database_matches_the_models(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    upgrade(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == [], f"a model change without a migration: {diff}"


ARCHITECTURES = [
    None,
    "",
    "x86_64@el9#avx2",
    "nvidia-gpu",
    "amd-gpu",
    " #&nvidia:cuda>=12.0:vram>=40G:model!=.*P100.* ",
    "el9#&nvidia:model=.*A100.*:uarch=ampere:driver>=535.1",
    "#&intel:vram>=1.5g:driver_version>=1",
    '{"gpu_spec": {"vendor": "amd", "model": "MI2.*", "version": "6.0", "vram": "64GB"}}',
    '{"gpu_spec": {"microarchitecture": "hopper", "driver_version": "550"}}',
    "voodoo-gpu",  # refused at submission today; a CPU request, as brokerage read it
]


def test_0007_fills_the_task_columns_from_the_stored_parameters(database_url: str) -> None:
    """Existing tasks get the resource columns that job creation and brokerage now read."""
    engine = make_engine(database_url)
    config = alembic_config(database_url)
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0006")
    documents: list[dict[str, Any]] = [{}]  # a hand-made row, as some tests store
    for i, architecture in enumerate(ARCHITECTURES):
        sent = {
            "containerImage": "base",
            "outDS": f"user.alice.t{i}",
            "coreCount": 1 + i % 4,
            "ramCount": None if i % 3 else 1000 * i + 1,
            "maxWalltime": None if i % 2 else 600 + i,
            "excludedSite": [f"Q{n}" for n in range(i % 3)],
            "architecture": architecture,
        }
        documents.append(TaskCreate.model_validate(sent).model_dump(by_alias=True))
    tasks_0006 = table(
        "tasks",
        *(column(name) for name in ("id", "name", "owner", "status", "kind", "image", "out_ds")),
        *(column(name) for name in ("architecture", "n_jobs", "priority", "max_attempt")),
        column("params", JSON()),
        column("created_at", TZDateTime()),
        column("modified_at", TZDateTime()),
    )
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            tasks_0006.insert(),
            [
                {
                    "id": n + 1,
                    "name": f"t{n}",
                    "owner": "alice",
                    "status": "ready",
                    "kind": "runcontainer",
                    "image": "base",
                    "out_ds": f"user.alice.t{n}",
                    "architecture": document.get("architecture"),
                    "n_jobs": 1,
                    "priority": 1000,
                    "max_attempt": 3,
                    "params": document,
                    "created_at": now,
                    "modified_at": now,
                }
                for n, document in enumerate(documents)
            ],
        )
    upgrade(engine)

    def gpu(architecture: str | None) -> dict[str, Any] | None:
        try:
            request = parse_architecture(architecture)
        except InvalidRequest:
            return None
        return request.gpu.to_document() if request.gpu is not None else None

    expected = [
        (
            n + 1,
            document.get("coreCount") or 1,
            document.get("ramCount") or 0,
            document.get("maxWalltime") or 0,
            gpu(document.get("architecture")),
            document.get("excludedSite", []),
        )
        for n, document in enumerate(documents)
    ]
    query = select(
        Task.id, Task.cores, Task.memory_mb, Task.walltime_s, Task.gpu_request, Task.excluded_sites
    ).order_by(Task.id)
    with engine.connect() as conn:
        got = [tuple(row) for row in conn.execute(query)]
        cpu_only = set(conn.scalars(select(Task.id).where(Task.gpu_request.is_(None))))
    assert got == expected
    assert cpu_only == {row[0] for row in expected if row[4] is None}, "SQL NULL, not JSON null"
    assert sum(row[4] is not None for row in expected) == 7

    with engine.begin() as conn:  # and back down, and up again
        config.attributes["connection"] = conn
        command.downgrade(config, "0006")
    upgrade(engine)
    engine.dispose()
