"""Queue configuration: validated, and every error names the queue and the field."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest

from harvester.config import default_settings_text, ensure_settings_file, parse_queues
from harvester.errors import ConfigError
from harvester.settings import load_settings


def queues(text: str, cores: int | None = 4):  # type: ignore[no-untyped-def]
    return parse_queues(tomllib.loads(text), node_cores=cores)


def test_camel_case_caps_and_defaults() -> None:
    [q] = queues("""
[queues.ANALY_X]
provider = "local"
maxWorkers = 3
maxNewWorkersPerCycle = 1
""")
    assert q.max_workers == 3 and q.queue_limit == 3 and q.max_new_workers_per_cycle == 1
    assert q.allow_network is False and q.container_runtime == "auto"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('provider = "pbs"', "queue ANALY_X: field provider"),
        ('provider = "local"\nmaxWorkers = -1', "queue ANALY_X: field maxWorkers"),
        ('provider = "local"\ncores = 64', "queue ANALY_X: field cores: 64 cores per slot"),
        ('provider = "local"\nmaxWalltime = 10', "queue ANALY_X: field maxWalltime"),
        ('provider = "local"\ncolour = "red"', "queue ANALY_X: field colour"),
        ('provider = "local"\nmaxNodes = 2', "maxNodes > 1 needs the slurm provider"),
        ('provider = "slurm"\nmaxNodes = 2', "the ranks of a multi-node job talk"),
        ('provider = "slurm"\nmaxNodes = 0', "queue ANALY_X: field maxNodes"),
    ],
)
def test_errors_name_queue_and_field(table: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        queues(f"[queues.ANALY_X]\n{table}\n")


def test_default_settings_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "harvester.toml"
    assert ensure_settings_file(path) is True
    assert ensure_settings_file(path) is False
    [q] = parse_queues(tomllib.loads(path.read_text()))
    assert q.name == "ANALY_LOCAL" and q.provider == "local"
    assert "maxWorkers = 7" in default_settings_text(cores=7)


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "h.toml"
    path.write_text("[harvester]\nport = 9000\nheartbeat_timeout_s = 50\n")
    monkeypatch.setenv("HPCAF_HOME", str(tmp_path))
    monkeypatch.setenv("HPCAF_PORT", "9100")
    settings, _ = load_settings(path)
    assert settings.port == 9100 and settings.heartbeat_timeout_s == 50
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / 'harvester.db'}"
    path.write_text("[harvester]\nheartbeat_timeout_s = -1\n")
    with pytest.raises(ConfigError, match="heartbeat_timeout_s"):
        load_settings(path)
    path.write_text("[harvester\n")
    with pytest.raises(ConfigError, match=r"h\.toml"):
        load_settings(path)


EXAMPLES = sorted((Path(__file__).parent.parent / "docs" / "examples").glob("*.toml"))


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_documented_examples_are_valid(example: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every settings file in docs/examples parses: its [harvester] settings, its queues,
    and the Parsl providers it names (built as the harvester builds them at start)."""
    from harvester.providers.registry import make_provider
    from harvester.settings import HarvesterSettings

    for key in [k for k in os.environ if k.startswith("HPCAF_")]:
        monkeypatch.delenv(key)
    document = tomllib.loads(example.read_text())
    HarvesterSettings(**document.get("harvester", {}))
    parsed = parse_queues(document)
    assert parsed, f"{example.name} defines no queue"
    for queue in parsed:
        if queue.provider == "parsl":
            make_provider(queue)
