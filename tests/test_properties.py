"""Property tests (hypothesis): the state machines, and the parsers of what users type."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from db.errors import IllegalTransition
from db.states import JOB_TERMINAL, TASK_TERMINAL, WORKER_TERMINAL, allowed, check_transition
from harvester.architecture import parse_architecture
from harvester.client.pcontainer import build_params
from harvester.client.pfit import FIRST_JOB_SHARE, auto_groups
from harvester.errors import InvalidRequest
from harvester.scans.space import check_placeholders, parse_search_space
from protocol.states import JobStatus, TaskStatus, WorkerStatus

MACHINES = [
    (TaskStatus, TaskStatus.REGISTERED, TASK_TERMINAL),
    (JobStatus, JobStatus.DEFINED, JOB_TERMINAL),
    (WorkerStatus, WorkerStatus.SUBMITTED, WORKER_TERMINAL),
]


@pytest.mark.parametrize(("kind", "start", "terminal"), MACHINES)
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_random_moves_never_leave_a_valid_state(
    kind: Any, start: Any, terminal: Any, data: st.DataObject
) -> None:
    """Apply random moves, legal or not: legal ones are taken, illegal ones raise and change
    nothing, the state is always a member of the enum, and no move leaves a terminal state
    (except a task's declared retry edge back to ready)."""
    state = start
    moves = data.draw(st.lists(st.sampled_from(list(kind)), max_size=30))
    for new in moves:
        if allowed(state, new):
            check_transition(state, new)
            previous, state = state, new
            if previous in terminal:
                assert kind is TaskStatus and new is TaskStatus.READY, (previous, new)
        else:
            with pytest.raises(IllegalTransition):
                check_transition(state, new)
        assert isinstance(state, kind)


@pytest.mark.parametrize(("kind", "start", "terminal"), MACHINES)
def test_no_move_back_to_the_first_state(kind: Any, start: Any, terminal: Any) -> None:
    assert not any(allowed(s, start) for s in kind), f"{start} is only ever the first state"


@settings(max_examples=300, deadline=None)
@given(
    options=st.dictionaries(
        st.sampled_from(["exec", "outDS", "nJobs", "site", "architecture", "maxAttempt"]),
        st.one_of(st.none(), st.text(max_size=20), st.integers(-5, 50)),
    ),
    loaded=st.dictionaries(st.text(max_size=10), st.one_of(st.text(max_size=10), st.integers())),
)
def test_pcontainer_options_override_the_loaded_json(
    options: dict[str, Any], loaded: dict[str, Any]
) -> None:
    """--loadJson values stay unless an option is given; given options always win."""
    params = build_params(options, loaded)
    for key, value in options.items():
        if value is not None:
            assert params[key] == value
        elif key in loaded:
            assert params[key] == loaded[key]
    for key, value in loaded.items():
        if options.get(key) is None:
            assert params[key] == value
    json.dumps(params)  # what is sent stays JSON


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=80))
def test_architecture_strings_parse_or_are_refused_clearly(text: str) -> None:
    """Any string: parsed, or an InvalidRequest (a 400), never another exception."""
    try:
        request = parse_architecture(text)
    except InvalidRequest as exc:
        assert str(exc)
    else:
        assert request.needs_gpu in (True, False)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=500, deadline=None)
@given(document=json_values, command=st.text(max_size=40))
def test_search_spaces_parse_or_are_refused_clearly(document: Any, command: str) -> None:
    """Any JSON value as a search space, any --exec: accepted or an InvalidRequest."""
    try:
        space = parse_search_space(document)
        check_placeholders(command, space)
    except InvalidRequest as exc:
        assert str(exc)


@settings(max_examples=300, deadline=None)
@given(n=st.integers(min_value=1, max_value=400), slots=st.integers(min_value=1, max_value=32))
def test_a_campaign_split_by_itself_fits_every_patch_once_a_small_job_first(
    n: int, slots: int
) -> None:
    """Every patch in exactly one job, in order; no job larger than two jobs per slot's
    share (larger jobs align larger models); where there are enough patches, one small
    job first (dispatched first: the first CLs come early), then two per slot within one
    patch of each other but the last, which is the small job's size smaller (the slot
    that ran the small job takes it at the end, and the slots end together)."""
    names = [f"p{i}" for i in range(n)]
    jobs = [job["patches"] for job in auto_groups(names, slots)]
    assert [name for job in jobs for name in job] == names
    assert all(jobs)
    per_job = -(-n // (2 * slots))
    sizes = [len(job) for job in jobs]
    assert max(sizes) <= per_job
    first = per_job // FIRST_JOB_SHARE
    if first >= 1:
        rest = sizes[1:]
        assert sizes[0] == first < min(rest)
        assert len(rest) == 2 * slots and max(rest[:-1]) - min(rest[:-1]) <= 1
        assert rest[-1] + first == n // (2 * slots) <= min(rest[:-1])
    else:
        assert sizes[:-1] == [per_job] * (len(sizes) - 1)
