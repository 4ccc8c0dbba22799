"""What a PanDA user types means what it means in panda-client: prun's units, site lists,
``--noSubmit`` as a dry run of the harvester's checks, and pbook's ``1,2,3`` and ``all``.

A real harvester whose queues start no pilots: every job stays where brokerage put it, so
the tests read what was stored and decided, and kill or retry tasks without racing pilots.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from harvester.client.task_options import OptionError, memory_per_job, walltime_seconds
from tests.helpers import Harvester, harvester_settings, make_harvester, wait_for

pytestmark = pytest.mark.e2e

TASK = ("--containerImage", "base", "--exec", "true", "--outDS", "user.alice.units")


@pytest.fixture(scope="module")
def hv(
    tmp_path_factory: pytest.TempPathFactory,
    image_cache: Path,
    module_database_env: dict[str, str],
) -> Iterator[Harvester]:
    h = make_harvester(
        tmp_path_factory.mktemp("panda"),
        image_cache,
        harvester_settings(max_workers=0),
        dict(module_database_env),
    )
    yield h
    h.cleanup()


def _stored(h: Harvester, task_id: int) -> tuple[int, int, str | None]:
    row = h.query("SELECT memory_mb, walltime_s, site FROM tasks WHERE id = :t", t=task_id)[0]
    return int(row[0]), int(row[1]), row[2]


def _brokerage(h: Harvester, task_id: int) -> tuple[str | None, str | None]:
    """The queue and message brokerage gave the task's first job (once it looked)."""

    def looked() -> tuple[str | None, str | None] | None:
        rows = h.query(
            "SELECT queue, brokerage_message FROM jobs WHERE task_id = :t ORDER BY id", t=task_id
        )
        if not rows:  # the splitter has not made the job yet
            return None
        queue, message = rows[0]
        return (queue, message) if queue or message else None

    found: tuple[str | None, str | None] = wait_for(looked, 30, "brokerage to look at the job")
    return found


def test_conversions_and_their_refusals() -> None:
    assert memory_per_job(2000, None) == 2000 and memory_per_job(2000, 4) == 8000
    assert walltime_seconds(24) == 86400 and walltime_seconds(0.5) == 1800
    assert walltime_seconds(0.001) == 60, "never below the harvester's one minute"
    for bad in (lambda: memory_per_job(0, 1), lambda: walltime_seconds(0)):
        with pytest.raises(OptionError, match="--"):
            bad()


def test_walltime_in_hours_and_memory_per_core(hv: Harvester) -> None:
    """``--maxWalltime 24`` is a day, as in prun: more than the queue's 600 s, so brokerage
    finds no queue and says why (read as seconds, it would have fitted)."""
    day = hv.submit(*TASK, "--maxWalltime", "24")
    assert _stored(hv, day)[1] == 86400
    queue, message = _brokerage(hv, day)
    assert queue is None and message is not None and "86400" in message, message

    small = hv.submit(*TASK, "--maxWalltime", "0.1", "--memory", "900", "--nCore", "1")
    assert _stored(hv, small)[:2] == (900, 360)
    assert _brokerage(hv, small)[0] is not None, "0.1 h and 900 MB fit the queue"

    per_core = hv.pcontainer(*TASK, "--memory", "900", "--nCore", "2", "--dumpJson", "t.json")
    assert per_core.returncode == 0, per_core.output
    assert '"ramCount": 1800' in (hv.user_dir / "t.json").read_text(), "900 MB per core, 2 cores"

    refused = hv.pcontainer(*TASK, "--maxWalltime", "0")
    assert refused.returncode == 2 and "--maxWalltime 0" in refused.stderr, refused.output


def test_site_and_excluded_site_take_comma_lists(hv: Harvester) -> None:
    both = hv.submit(*TASK, "--site", "ANALY_MANUAL, ANALY_LOCAL")
    assert _stored(hv, both)[2] == "ANALY_MANUAL,ANALY_LOCAL"
    assert _brokerage(hv, both)[0] in ("ANALY_MANUAL", "ANALY_LOCAL")

    excluded = hv.submit(*TASK, "--excludedSite", "ANALY_LOCAL,ANALY_MANUAL")
    queue, message = _brokerage(hv, excluded)
    assert queue is None and "excluded" in (message or ""), message

    unknown = hv.pcontainer(*TASK, "--site", "ANALY_LOCAL,NOPE")
    assert unknown.returncode == 2 and "unknown site 'NOPE'" in unknown.stderr, unknown.output


@pytest.mark.database  # the dry run's rollback, on each database
def test_no_submit_runs_every_check_and_stores_nothing(hv: Harvester) -> None:
    before = hv.query("SELECT count(*) FROM tasks")[0][0]
    bad = hv.pcontainer(*TASK, "--architecture", "#&nvidia:cuda>=twelve", "--noSubmit")
    assert bad.returncode == 2 and "invalid cuda version" in bad.stderr, bad.output
    site = hv.pcontainer(*TASK, "--site", "NOPE", "--noSubmit")
    assert site.returncode == 2 and "unknown site 'NOPE'" in site.stderr, site.output
    good = hv.pcontainer(*TASK, "--nJobs", "3", "--noSubmit")
    assert good.returncode == 0 and "would accept this task (3 jobs" in good.stderr, good.output
    assert "jediTaskID" not in good.stdout
    assert hv.query("SELECT count(*) FROM tasks")[0][0] == before, "a dry run stores nothing"


def test_pbook_kill_and_retry_take_lists_and_all(hv: Harvester) -> None:
    first, second, third = (hv.submit(*TASK) for _ in range(3))
    bobs = hv.submit(
        "--containerImage", "base", "--exec", "true", "--outDS", "user.bob.x", user="bob"
    )  # fmt: skip
    killed = hv.pbook("kill", f"{first},{second}")
    assert killed.returncode == 0, killed.output
    assert [hv.task(t)["status"] for t in (first, second)] == ["aborted", "aborted"]
    assert hv.task(third)["status"] != "aborted"

    admins = hv.submit(
        "--containerImage", "base", "--exec", "true", "--outDS", "user.admin.x", user="admin"
    )  # fmt: skip
    by_admin = hv.pbook("kill", "all", user="admin")
    assert by_admin.returncode == 0, by_admin.output
    assert hv.task(admins)["status"] == "aborted"
    assert hv.task(third)["status"] != "aborted", "an admin's all is the admin's own tasks"
    assert hv.task(bobs)["status"] != "aborted"

    everything = hv.pbook("kill", "all")
    assert everything.returncode == 0, everything.output
    assert hv.task(third)["status"] == "aborted"
    assert hv.task(bobs)["status"] != "aborted", "all is the caller's own tasks"

    retried = hv.pbook(
        "retry", f"{first},{second}", "--memory", "700", "--maxWalltime", "0.05",
        "--site", "ANALY_MANUAL",
    )  # fmt: skip
    assert retried.returncode == 0, retried.output
    for task_id in (first, second):
        assert _stored(hv, task_id) == (700, 180, "ANALY_MANUAL")
        newest = hv.query(
            "SELECT memory_mb, walltime_s, attempt_nr FROM jobs WHERE task_id = :t "
            "ORDER BY attempt_nr DESC LIMIT 1",
            t=task_id,
        )[0]
        assert tuple(newest) == (700, 180, 2)
        reasons = [
            r[0]
            for r in hv.query(
                "SELECT reason FROM state_history WHERE entity = 'task' AND entity_id = :t",
                t=task_id,
            )
        ]
        assert any("site=ANALY_MANUAL" in (r or "") for r in reasons), reasons

    mixed = hv.pbook("kill", f"{first},999999")
    assert mixed.returncode == 2 and "999999" in mixed.stderr, mixed.output
    assert hv.task(first)["status"] == "aborted", "the known task was killed all the same"

    nonsense = hv.pbook("retry", "1,two")
    assert nonsense.returncode == 2 and "1,2,3 or all" in nonsense.stderr, nonsense.output


LONG_QUEUE = "ANALY_A_QUEUE_NAME_LONGER_THAN_EIGHTY_COLUMNS_COULD_EVER_SHOW_IN_A_TABLE_CELL_X"


def test_listings_are_whole_when_piped_and_json_on_request(harvester_factory) -> None:  # type: ignore[no-untyped-def]
    """Captured output is not a terminal: a table never cuts a queue name to ``ANALY…``,
    and every admin and user listing prints JSON with ``--json``."""
    h = harvester_factory(
        harvester_settings(
            f'[queues.{LONG_QUEUE}]\nprovider = "local"\ncores = 1\nmemory_mb = 1000\n'
            "maxWalltime = 600\nmaxWorkers = 0\n"
        )
    )
    table = h.cli("harvester.cli", "queue", "list")
    assert table.returncode == 0, table.output
    assert LONG_QUEUE in table.stdout and "…" not in table.stdout, table.stdout
    queues = json.loads(h.cli("harvester.cli", "queue", "list", "--json").stdout)
    assert {q["queue"] for q in queues} == {"ANALY_LOCAL", "ANALY_MANUAL", LONG_QUEUE}
    assert all(isinstance(q["cores"], int) for q in queues)

    tokens = json.loads(h.cli("harvester.cli", "token", "list", "--json").stdout)
    assert {"alice", "bob", "admin"} <= {t["user"] for t in tokens}
    assert not any(secret in json.dumps(tokens) for secret in h.tokens.values())
    images = json.loads(h.cli("harvester.cli", "image", "list", "--json").stdout)
    assert "base" in {i["name"] for i in images}

    task_id = h.submit(*TASK, "--site", LONG_QUEUE)
    mine = json.loads(h.pbook("show", "--json").stdout)
    assert task_id in {t["id"] for t in (mine["items"] if isinstance(mine, dict) else mine)}
    jobs = h.pbook("jobs", str(task_id))
    assert jobs.returncode == 0 and LONG_QUEUE in jobs.stdout, jobs.output


def test_phpo_load_json_takes_what_dump_json_wrote(hv: Harvester) -> None:
    """``phpo --dumpJson`` then ``phpo --loadJson``, as panda-client users keep scan
    definitions: the scan comes back whole, and options on the command line override it."""
    dumped = hv.user_dir / "scan.json"
    first = hv.cli(
        "harvester.client.phpo", "--containerImage", "base", "--exec", "echo %{x} %{y}",
        "--searchSpace", '{"x": [1, 2, 3], "y": {"method": "uniform", "dimension": '
        '{"low": 0, "high": 1}}}', "--algorithm", "random", "--maxPoints", "7",
        "--outDS", "user.alice.scan", "--dumpJson", str(dumped), "--noSubmit",
    )  # fmt: skip
    assert first.returncode == 0 and "would accept" in first.stderr, first.output
    again = hv.cli("harvester.client.phpo", "--loadJson", str(dumped), "--maxPoints", "3")
    assert again.returncode == 0, again.output
    task_id = int(again.stdout.split("jediTaskID=")[1].split()[0])
    steering = hv.task(task_id)["params"]["steering"]
    assert steering["algorithm"] == "random" and steering["maxPoints"] == 3
    assert set(steering["searchSpace"]) == {"x", "y"}
    assert hv.task(task_id)["params"]["exec"] == "echo %{x} %{y}"

    missing = hv.cli("harvester.client.phpo", "--containerImage", "base", "--exec", "true")
    assert missing.returncode == 2 and "--searchSpace is required" in missing.stderr


def test_a_scan_written_for_panda_clients_phpo_runs_as_it_is(hv: Harvester) -> None:
    """panda-client's option names in a --loadJson file, its search-space file in the
    segmented form, and an evaluation that reads input.json and writes output.json."""
    (hv.user_dir / "space.json").write_text(
        json.dumps([{"model_id": 0, "search_space": {
            "x": {"method": "categorical", "dimension": {"categories": [1, 2]}}}}])
    )  # fmt: skip
    evaluation = (
        "python3 -c \"import json; p = json.load(open('input.json')); "
        "json.dump({'loss': p['x'] * 10}, open('output.json', 'w'))\""
    )
    options = hv.user_dir / "phpo-options.json"
    options.write_text(
        json.dumps({
            "evaluationContainer": "base", "evaluationExec": evaluation,
            "searchSpaceFile": "space.json", "maxPoints": 2, "nParallelEvaluation": 2,
            "outDS": "user.alice.pandastyle", "steeringExec": "run --rm steering",
            "site": "ANALY_MANUAL",
        })
    )  # fmt: skip
    submitted = hv.cli("harvester.client.phpo", "--loadJson", str(options), "--algorithm", "grid")
    assert submitted.returncode == 0, submitted.output
    assert "ignored: steeringExec" in submitted.stderr
    task_id = int(submitted.stdout.split("jediTaskID=")[1].split()[0])
    hv.start_pilot("ANALY_MANUAL")  # this module's queues start no pilots themselves
    assert hv.wait_task(task_id, 120)["status"] == "done"
    points = hv.api().get(f"/api/v1/tasks/{task_id}/points").json()["points"]
    assert sorted((p["params"]["x"], p["metric"]) for p in points) == [(1, 10.0), (2, 20.0)]

    two = hv.user_dir / "two.json"
    two.write_text(json.dumps([{"x": [1]}, {"x": [2]}]))
    refused = hv.cli(
        "harvester.client.phpo", "--evaluationContainer", "base", "--evaluationExec", "true",
        "--searchSpaceFile", str(two), "--outDS", "user.alice.segments",
    )  # fmt: skip
    assert refused.returncode != 0 and "segmented HPO" in refused.output
    assert "Traceback" not in refused.output
