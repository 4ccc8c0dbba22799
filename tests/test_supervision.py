"""One supervision for both execution paths: the walltime, kill requests and a
payload that vanishes end a job with the same codes and words either way."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest

from pilot.execution import ContainerPayload
from pilot.outcome import Outcome
from pilot.supervision import Exited, Supervisor
from protocol.error_codes import PilotErrorCode


def payload(seconds: float, code: int = 0) -> ContainerPayload:
    return ContainerPayload(
        subprocess.Popen(
            ["sh", "-c", f"sleep {seconds}; exit {code}"],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    )


class SilentWorker(ContainerPayload):
    """A warm worker's payload: no exit code when it dies or runs out of time."""

    died = "the warm worker died (see warm.log of the pilot)"

    def wait(self, timeout_s: float) -> int | None:
        code = super().wait(timeout_s)
        return None if code is None or code < 0 else code

    def stop(self) -> int | None:
        super().stop()
        return None


def test_an_exit_within_the_walltime_is_the_payloads() -> None:
    supervisor, running = Supervisor(), []
    with supervisor.job(1):
        ended = supervisor.supervise(payload(0, code=3), 30, lambda: running.append(True))
    assert isinstance(ended, Exited) and ended.code == 3 and running == [True]


def test_a_payload_past_its_walltime_is_stopped() -> None:
    supervisor = Supervisor()
    started = time.monotonic()
    with supervisor.job(1):
        ended = supervisor.supervise(payload(30), 0.3, lambda: None)
    assert time.monotonic() - started < 10
    assert ended == Outcome(
        "failed",
        exit_code=-15,
        error_code=PilotErrorCode.WALLTIME_EXCEEDED,
        diagnostics="payload ran past its walltime of 0s",
    )


def test_a_kill_stops_the_payload_with_its_reason() -> None:
    supervisor = Supervisor()
    with supervisor.job(5):
        threading.Timer(
            0.3, supervisor.kill, (5, PilotErrorCode.KILLED, "killed on the server's command")
        ).start()
        ended = supervisor.supervise(payload(30), 60, lambda: None)
    assert ended == Outcome(
        "failed",
        exit_code=-15,
        error_code=PilotErrorCode.KILLED,
        diagnostics="killed on the server's command",
    )


def test_a_kill_for_another_job_or_a_job_that_ended_is_ignored() -> None:
    supervisor = Supervisor()
    supervisor.kill(5, PilotErrorCode.KILLED, "before job 5 started: it was not held yet")
    with supervisor.job(5):
        supervisor.kill(6, PilotErrorCode.KILLED, "another job")
        ended = supervisor.supervise(payload(0), 60, lambda: None)
    assert isinstance(ended, Exited) and ended.code == 0


def test_a_signal_to_the_pilot_also_stops_the_jobs_that_start_after_it() -> None:
    """A job acquired while the signal arrived starts after it: it is stopped at once,
    and reported with the signal's reason, rather than run to its walltime."""
    supervisor = Supervisor()
    supervisor.kill(None, PilotErrorCode.PILOT_SIGNALLED, "pilot received SIGTERM")
    started = time.monotonic()
    with supervisor.job(7):
        ended = supervisor.supervise(payload(30), 60, lambda: None)
    assert time.monotonic() - started < 10
    assert isinstance(ended, Outcome) and ended.error_code is PilotErrorCode.PILOT_SIGNALLED


@pytest.mark.parametrize("warm", [False, True], ids=["container", "warm"])
def test_a_kill_before_the_payload_started_stops_it_once_it_has(warm: bool) -> None:
    supervisor = Supervisor()
    with supervisor.job(5):
        supervisor.kill(None, PilotErrorCode.PILOT_SIGNALLED, "pilot received SIGTERM")
        started = payload(30)
        if warm:
            started = SilentWorker(started.process)
        ended = supervisor.supervise(started, 60, lambda: None)
    assert isinstance(ended, Outcome) and ended.error_code is PilotErrorCode.PILOT_SIGNALLED
    assert ended.diagnostics == "pilot received SIGTERM"


def test_a_warm_worker_past_the_walltime_or_dead() -> None:
    supervisor = Supervisor()
    with supervisor.job(1):
        late = supervisor.supervise(SilentWorker(payload(30).process), 0.3, lambda: None)
        dead = supervisor.supervise(
            SilentWorker(subprocess.Popen(["sh", "-c", "kill -9 $$"], start_new_session=True)),
            60,
            lambda: None,
        )
    assert late == Outcome(
        "failed",
        error_code=PilotErrorCode.WALLTIME_EXCEEDED,
        diagnostics="payload ran past its walltime of 0s",
    )
    assert dead == Outcome(
        "failed",
        error_code=PilotErrorCode.CONTAINER_FAILED,
        diagnostics="the warm worker died (see warm.log of the pilot)",
    )


def test_a_running_report_waits_for_a_short_payload_to_end_first() -> None:
    """With ``report_after_s``, a payload that ends sooner is never reported running (its
    start goes with its end); one still at work then is reported, while it runs, once."""
    supervisor = Supervisor()
    seen_alive: list[bool] = []
    with supervisor.job(1):
        short = supervisor.supervise(
            payload(0, code=0), 30, lambda: seen_alive.append(True), report_after_s=5
        )
    assert isinstance(short, Exited) and short.code == 0 and seen_alive == []
    longer = payload(1.5)
    with supervisor.job(2):
        ended = supervisor.supervise(
            longer,
            30,
            lambda: seen_alive.append(longer.process.poll() is None),
            report_after_s=0.2,
        )
    assert isinstance(ended, Exited) and ended.code == 0 and seen_alive == [True]
    with supervisor.job(3):
        dead = supervisor.supervise(
            SilentWorker(subprocess.Popen(["sh", "-c", "kill -9 $$"], start_new_session=True)),
            60,
            lambda: seen_alive.append(False),
            report_after_s=5,
        )
    assert isinstance(dead, Outcome) and dead.error_code is PilotErrorCode.CONTAINER_FAILED
    assert seen_alive == [True], "a worker that died is not reported running"


def test_a_warm_worker_goes_back_to_the_pool_only_once_it_answered(tmp_path: Path) -> None:
    """A job whose supervision ended before its worker answered (its ``running`` report
    refused) must not lend that worker on: the next job would read this job's answer."""
    from pilot.execution import WarmPayload
    from pilot.warm import WarmPool

    pool, key, log = WarmPool(), ("alice", "image"), tmp_path / "warm.log"
    silent = pool.take(key, ["sh", "-c", "read job; cat >/dev/null"], log)
    unanswered = WarmPayload(pool, key, silent, {"workdir": "w", "env": {}})
    assert unanswered.wait(0.2) is None
    unanswered.finish()
    assert not silent.alive(), "stopped, not lent again"
    answering = ["sh", "-c", "read job; echo '{\"exit_code\": 0}'; cat >/dev/null"]
    worker = pool.take(key, answering, log)
    answered = WarmPayload(pool, key, worker, {"workdir": "w", "env": {}})
    assert answered.wait(5) == 0
    answered.finish()
    assert pool.take(key, answering, log) is worker, "an answered worker serves the next job"
    pool.close()
