"""The submitting CLIs' option table agrees with the task parameters the server parses."""

from __future__ import annotations

from harvester.client.task_options import WIRE_NAMES, TaskOptions, task_parameters
from protocol.tasks import TaskCreate


def test_every_option_is_a_task_parameter_under_its_wire_name() -> None:
    fields = TaskCreate.model_fields
    assert set(TaskOptions.__annotations__) <= set(fields)
    for name in TaskOptions.__annotations__:
        assert WIRE_NAMES.get(name, name) == (fields[name].alias or name), name
    assert set(WIRE_NAMES) == {name for name, field in fields.items() if field.alias}


def test_the_options_arrive_under_the_names_the_server_reads() -> None:
    sent = task_parameters(
        containerImage="base", outDS="user.a.b", cores=4, memory_mb=100, walltime_s=600, site=None
    )
    assert sent == {
        "containerImage": "base",
        "outDS": "user.a.b",
        "coreCount": 4,
        "ramCount": 100,
        "maxWalltime": 600,
        "site": None,
    }
    parsed = TaskCreate.model_validate(sent)
    assert (parsed.cores, parsed.memory_mb, parsed.walltime_s) == (4, 100, 600)
