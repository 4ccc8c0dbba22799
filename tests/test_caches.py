"""The per-process memories of checked tokens and empty queues: they expire, and never
answer for something they were not told."""

from __future__ import annotations

import pytest

from db.models import Role
from harvester.identity import Principal
from harvester.stores import caches
from harvester.stores.caches import IdleQueues, TokenCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


ALICE = Principal(user="alice", role=Role.USER, token_id=1)


def test_a_token_is_remembered_until_its_time_is_up() -> None:
    clock = Clock()
    tokens = TokenCache(5.0, clock)
    assert tokens.get("hpcaf_secret") is None
    tokens.remember("hpcaf_secret", ALICE)
    assert tokens.get("hpcaf_secret") == ALICE
    assert tokens.get("hpcaf_other") is None and tokens.get(None) is None
    clock.now += 5.0
    assert tokens.get("hpcaf_secret") is None


def test_tokens_are_kept_by_hash_only() -> None:
    tokens = TokenCache(5.0)
    tokens.remember("hpcaf_plaintext_token", ALICE)
    assert "hpcaf_plaintext_token" not in repr(tokens._memory._entries)


def test_no_memory_when_the_lifetime_is_zero() -> None:
    tokens = TokenCache(0.0)
    tokens.remember("hpcaf_secret", ALICE)
    assert tokens.get("hpcaf_secret") is None
    idle = IdleQueues(0.0)
    idle.found_nothing(("Q", None, None, None), None)
    assert not idle.is_idle(("Q", None, None, None), None)


def test_an_empty_queue_is_remembered_per_resources_and_forgotten_on_new_work() -> None:
    clock = Clock()
    idle = IdleQueues(1.0, clock)
    small, big = ("Q", 1, 2000, 0), ("Q", 8, 16000, 1)
    idle.found_nothing(small, None)
    assert idle.is_idle(small, None)
    assert not idle.is_idle(big, None)  # a bigger slot may fit jobs a small one did not
    idle.forget_queue("Q")
    assert not idle.is_idle(small, None)
    idle.found_nothing(small, None)
    idle.found_work(small)
    assert not idle.is_idle(small, None)
    idle.found_nothing(small, None)
    clock.now += 1.0
    assert not idle.is_idle(small, None)


def test_a_worker_not_seen_running_always_goes_to_the_database() -> None:
    """Its first poll moves it from submitted to running, so it cannot be answered from memory."""
    idle = IdleQueues(1.0)
    key = ("Q", None, None, None)
    idle.found_nothing(key, None)
    assert not idle.is_idle(key, worker_id=7)
    idle.found_nothing(key, 7)
    assert idle.is_idle(key, worker_id=7)


def test_memories_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(caches, "MAX_ENTRIES", 3)
    tokens = TokenCache(60.0)
    for i in range(5):
        tokens.remember(f"hpcaf_{i}", ALICE)
    assert [tokens.get(f"hpcaf_{i}") for i in range(5)] == [None, None, ALICE, ALICE, ALICE]
