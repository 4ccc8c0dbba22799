"""The idle pilot's poll backoff: grows, caps, jitters within bounds, resets."""

from __future__ import annotations

import random

import pytest

from pilot.polling import PollBackoff


def test_waits_grow_to_the_cap_within_the_jitter() -> None:
    backoff = PollBackoff(first=1.0, cap=5.0, factor=2.0, jitter=0.25, rng=random.Random(1))
    nominal = [1.0, 2.0, 4.0, 5.0, 5.0]
    for expected in nominal:
        wait = backoff.next_wait()
        assert expected * 0.75 <= wait <= expected * 1.25


def test_a_job_resets_the_wait() -> None:
    backoff = PollBackoff(first=1.0, cap=30.0, factor=1.5, jitter=0.0)
    waits = [backoff.next_wait() for _ in range(4)]
    assert waits == [1.0, 1.5, 2.25, 3.375]
    backoff.reset()
    assert backoff.next_wait() == 1.0


def test_jitter_spreads_a_fleet() -> None:
    waits = {PollBackoff(rng=random.Random(seed)).next_wait() for seed in range(50)}
    assert len(waits) == 50 and min(waits) >= 0.75 and max(waits) <= 1.25


@pytest.mark.parametrize(
    "kwargs", [{"first": 0}, {"first": 2, "cap": 1}, {"factor": 0.5}, {"jitter": 1.0}]
)
def test_nonsense_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="invalid poll backoff"):
        PollBackoff(**kwargs)  # type: ignore[arg-type]
