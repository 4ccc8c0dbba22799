"""Python functions as hpcaf jobs, behind a ``concurrent.futures.Executor``.

    with hpcaf.Executor(site="ANALY_LOCAL", containerImage="pyhf") as ex:
        futures = [ex.submit(infer_hypotest, ws, p.metadata, p.patch, "jax") for p in patchset]
        for f in concurrent.futures.as_completed(futures):
            print(f.result())

The path of a call:

1. ``submit`` checks at once what can be checked (the function and arguments
   pickle and fit the size limit; on the first call, a dry run of the task
   through ``POST /tasks/check``: the site, the image, the token, and the
   client's Python against the image's), and queues the call.
2. Calls made close together (``batch_window_s``) become one task: one calls
   file uploaded (shared arguments pickled once), one job per group of calls
   (several calls per job when calls are short: see :meth:`Executor._calls_per_job`).
3. Pilots run the jobs in warm ``pyfunc`` workers, one process per user and
   image, so imports are paid once (``pilot/warm.py``).
4. One thread per task follows ``GET /tasks/{id}/endings`` (a long poll: the
   harvester answers as soon as a job ends) and settles each call's future from
   its job's ``results.pkl``.

The calls are tasks in the harvester's database, so they outlive this process:
:meth:`Executor.reload` gives a new process the futures of a task submitted by
an old one, and nothing runs again.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import hashlib
import logging
import math
import pickle
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from harvester.client.http import ClientError, HarvesterClient
from hpcaf.errors import JobFailed, RemoteError, ResultTooLarge
from hpcaf.serialization import SERIALIZERS, CallsWriter, client_python, read_results
from protocol.files import INLINE_FILE_MAX_BYTES
from protocol.jobs import EndedJob, JobEndings
from protocol.states import TASK_TERMINAL, JobStatus

log = logging.getLogger(__name__)

CALLS_FILE = "calls.pkl"
RESULTS_FILE = "results.pkl"
PROBE = b"hpcaf: a dry run's stand-in for a calls file\n"
LONG_POLL_S = 20.0
INLINE_RESULTS_BYTES = 64 << 10
"""Results files up to this size come inside the endings answer (no request of their own)."""
MAX_JOBS_PER_BATCH = 64
"""When call durations are not known yet, a batch is split into at most this many jobs."""
MAX_BATCH_DELAY_S = 0.25
"""A batch goes out at the latest this long after its first call, even while calls keep
coming."""
MAX_BATCH_CALLS = 10_000
MAX_BATCH_BYTES = 256 << 20
TARGET_JOB_S = 0.5
"""Once durations are known, a job gets about this much work (fewer round trips for short
calls, one call per job for long ones)."""


class CallFuture(concurrent.futures.Future[Any]):
    """The future of one call; ``cancel()`` also kills the call's job."""

    def __init__(self, executor: Executor) -> None:
        super().__init__()
        self._executor = executor
        self.task_id: int | None = None
        """The task that runs the call, once its batch is submitted."""
        self.call_index: int | None = None
        """The call's place in its task (the calls file's order)."""

    def cancel(self) -> bool:
        if self.cancelled():
            return True
        if not self._settle_cancelled():
            return False
        self._executor._cancelled(self)
        return True

    def _settle_cancelled(self) -> bool:
        """Cancel without killing the job (it was killed on the harvester's side, or never
        sent). ``wait`` and ``as_completed`` count a cancelled future as done only once
        it is also *notified*, which an executor does where it would have started it."""
        with self._condition:  # reentrant: cancel() and the notification take it again
            if self.cancelled():
                return True  # already cancelled (and notified)
            if not super().cancel():
                return False
            self.set_running_or_notify_cancel()
            return True


@dataclass
class _Batch:
    """Calls queued to go out together as one task."""

    writer: CallsWriter
    futures: list[CallFuture] = field(default_factory=list)
    per_job: list[int | None] = field(default_factory=list)
    """Each call's ``chunksize`` from ``map`` (None: the executor chooses)."""
    functions: set[str] = field(default_factory=set)
    first: float = field(default_factory=time.monotonic)
    last: float = field(default_factory=time.monotonic)

    def add(
        self,
        future: CallFuture,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        per_job: int | None,
        limit: int,
    ) -> None:
        self.writer.add(fn, args, kwargs, limit)
        self.futures.append(future)
        self.per_job.append(per_job)
        self.functions.add(_key(fn))
        self.last = time.monotonic()

    @property
    def full(self) -> bool:
        return len(self.futures) >= MAX_BATCH_CALLS or self.writer.size >= MAX_BATCH_BYTES


@dataclass
class _Task:
    """A submitted batch: its futures by call index, and the call range of each job."""

    task_id: int
    futures: dict[int, CallFuture]
    spans: dict[int, tuple[int, int]]
    cursor: int = 0
    thread: threading.Thread | None = None
    open: set[int] = field(default_factory=set)
    """Call indices whose futures are not settled yet."""


class Executor(concurrent.futures.Executor):
    """Run Python callables as hpcaf jobs; a real :class:`concurrent.futures.Executor`.

    ``site`` and ``containerImage`` are pcontainer's (``site=None``: brokerage
    chooses); ``url``/``token`` default to ``HPCAF_URL``/``HPCAF_TOKEN``.
    ``serializer`` is ``"cloudpickle"`` or ``"source"`` (hpcaf.serialization).
    ``calls_per_job`` fixes how many calls share a job (default: chosen per batch).
    """

    def __init__(
        self,
        site: str | None = None,
        containerImage: str = "pyhf",
        *,
        client: HarvesterClient | None = None,
        url: str | None = None,
        token: str | None = None,
        serializer: str = "cloudpickle",
        calls_per_job: int | None = None,
        batch_window_s: float = 0.002,
        max_call_bytes: int = 64 << 20,
        max_result_bytes: int = 64 << 20,
        cores: int = 1,
        memory_mb: int | None = None,
        max_attempt: int = 3,
        task_name: str = "hpcaf.Executor",
        env: dict[str, str] | None = None,
    ) -> None:
        if serializer not in SERIALIZERS:
            raise ValueError(f"serializer must be one of {', '.join(SERIALIZERS)}")
        if calls_per_job is not None and calls_per_job < 1:
            raise ValueError("calls_per_job must be at least 1")
        self.http = client or HarvesterClient(url, token)
        self._owns_client = client is None
        self.site = site
        self.image = containerImage
        self.serializer = serializer
        self.calls_per_job = calls_per_job
        self.batch_window_s = batch_window_s
        self.max_call_bytes = max_call_bytes
        self.max_result_bytes = max_result_bytes
        self.task_name = task_name
        self._task_options: dict[str, Any] = {
            "coreCount": cores,
            "maxAttempt": max_attempt,
            "env": dict(env or {}),
        }
        if memory_mb is not None:
            self._task_options["ramCount"] = memory_mb
        self.python = client_python(serializer)
        self._lock = threading.Condition()
        self._batch: _Batch | None = None
        self._tasks: dict[int, _Task] = {}
        self._checked = False
        self._owner: str | None = None
        self._shutdown = False
        self._seconds: dict[str, float] = {}
        """Mean seconds per call of each function seen (by qualified name)."""
        self._flusher = threading.Thread(target=self._flush_loop, name="hpcaf-batch", daemon=True)
        self._flusher.start()

    # -- concurrent.futures.Executor ---------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> CallFuture:
        """Queue one call; its future. Raises at once what can be known now (nothing is
        sent then): a function or arguments that cannot be pickled, a call over the size
        limit, an unknown site or image, a token without rights, a Python the image
        cannot read."""
        return self._enqueue(fn, args, kwargs, None)

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Iterator[Any]:
        """As ``concurrent.futures.Executor.map``; the calls go out as one batch, and
        ``chunksize`` > 1 runs that many consecutive calls in each job."""
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1")
        per_job = chunksize if chunksize > 1 else None
        futures = [
            self._enqueue(fn, args, {}, per_job, flush=False)
            for args in zip(*iterables, strict=False)
        ]
        self._flush_now()
        deadline = None if timeout is None else time.monotonic() + timeout

        def results() -> Iterator[Any]:
            try:
                for future in futures:
                    left = None if deadline is None else deadline - time.monotonic()
                    yield future.result(left)
            finally:
                for future in futures:
                    future.cancel()

        return results()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Send what is queued (or, with ``cancel_futures``, cancel every call not done,
        killing its job); with ``wait``, return when every future is settled."""
        with self._lock:
            if self._shutdown:
                already = True
            else:
                already = False
                self._shutdown = True
                if cancel_futures and self._batch is not None:
                    for future in self._take_batch().futures:  # type: ignore[union-attr]
                        future._settle_cancelled()
                self._lock.notify_all()
        if not already:
            self._flusher.join()
        if cancel_futures:
            for future in self._all_futures():
                future.cancel()
        if wait:
            concurrent.futures.wait(self._all_futures())
            for task in list(self._tasks.values()):
                if task.thread is not None:
                    task.thread.join()
            if self._owns_client:
                self.http.close()

    # -- durable futures ---------------------------------------------------------------

    @property
    def task_ids(self) -> list[int]:
        """The tasks this executor submitted or reloaded (keep them to :meth:`reload`)."""
        with self._lock:
            return sorted(self._tasks)

    def reload(self, task_id: int) -> list[CallFuture]:
        """The futures of a function task submitted earlier (by this process or one that
        is gone), in call order; nothing is submitted again. Calls that ended are
        settled at once, the others when their jobs end."""
        task = self.http.task(task_id)
        params = task.get("params") or {}
        if task.get("kind") != "pyfunc":
            raise ClientError(f"task {task_id} is a {task.get('kind')} task, not Python calls")
        spans = {
            index: (int(job["calls"][0]), int(job["calls"][1]))
            for index, job in enumerate(params.get("jobParameters") or [])
        }
        total = max((stop for _, stop in spans.values()), default=0)
        futures = {i: CallFuture(self) for i in range(total)}
        for index, future in futures.items():
            future.task_id, future.call_index = task_id, index
        self._follow(task_id, futures, spans)
        return [futures[i] for i in range(total)]

    # -- batching ----------------------------------------------------------------------

    def _enqueue(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        calls_per_job: int | None,
        *,
        flush: bool = True,
    ) -> CallFuture:
        if self._shutdown:
            raise RuntimeError("cannot submit after shutdown")
        self._check_submission()
        future = CallFuture(self)
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot submit after shutdown")
            if self._batch is None:
                self._batch = _Batch(CallsWriter(self.serializer, self.python))
            self._batch.add(future, fn, args, kwargs, calls_per_job, self.max_call_bytes)
            if flush:
                self._lock.notify_all()
        return future

    def _take_batch(self) -> _Batch | None:
        batch, self._batch = self._batch, None
        return batch

    def _flush_now(self) -> None:
        with self._lock:
            batch = self._take_batch()
        if batch is not None:
            self._submit_batch(batch)

    def _flush_loop(self) -> None:
        """Send the queued calls as one task once no call came for ``batch_window_s`` (or
        the batch is ``MAX_BATCH_DELAY_S`` old, or large)."""
        while True:
            with self._lock:
                while self._batch is None and not self._shutdown:
                    self._lock.wait()
                if self._batch is None:
                    return
                while not self._shutdown and self._batch is not None:
                    now = time.monotonic()
                    quiet = self.batch_window_s - (now - self._batch.last)
                    old = MAX_BATCH_DELAY_S - (now - self._batch.first)
                    if min(quiet, old) <= 0 or self._batch.full:
                        break
                    self._lock.wait(min(quiet, old))
                batch = self._take_batch()
            if batch is not None:
                self._submit_batch(batch)

    def _submit_batch(self, batch: _Batch) -> None:
        if all(f.cancelled() for f in batch.futures):
            return
        try:
            spans = self._spans(batch)
            calls = self._calls_input(batch.writer.getvalue())
            reply = self.http.submit_task(
                self._task_document(
                    calls, [{"calls": [a, b]} for a, b in spans], len(batch.futures)
                )
            )
        except Exception as exc:
            for future in batch.futures:
                _settle_exception(future, exc)
            return
        task_id = int(reply["jediTaskID"])
        futures = {}
        for index, future in enumerate(batch.futures):
            future.task_id, future.call_index = task_id, index
            futures[index] = future
        self._follow(task_id, futures, dict(enumerate(spans)))
        for future in futures.values():  # cancelled while the batch was on its way
            if future.cancelled():
                self._cancelled(future)

    def _spans(self, batch: _Batch) -> list[tuple[int, int]]:
        """The call range of each job: consecutive calls grouped by :meth:`_calls_per_job`."""
        spans: list[tuple[int, int]] = []
        start, n = 0, len(batch.futures)
        default = self._calls_per_job(batch)
        while start < n:
            stop = min(n, start + (batch.per_job[start] or default))
            spans.append((start, stop))
            start = stop
        return spans

    def _calls_per_job(self, batch: _Batch) -> int:
        """Calls per job for a batch: the executor's setting, else about ``TARGET_JOB_S``
        of work per job when the functions' durations are known, else the batch split
        into at most ``MAX_JOBS_PER_BATCH`` jobs."""
        if self.calls_per_job is not None:
            return self.calls_per_job
        n = len(batch.futures)
        means = [self._seconds.get(name) for name in batch.functions]
        if not means or any(m is None for m in means):
            return math.ceil(n / MAX_JOBS_PER_BATCH)
        mean = sum(m for m in means if m is not None) / len(means)
        by_time = int(TARGET_JOB_S / mean) if mean > 0 else n
        return max(1, min(n, max(by_time, math.ceil(n / 1000))))

    def _calls_input(self, data: bytes) -> dict[str, Any]:
        """The calls file as the task names it: a small one carried in the submission
        itself (one request for the whole batch), a larger one uploaded first."""
        if len(data) <= INLINE_FILE_MAX_BYTES:
            return {
                "name": CALLS_FILE,
                "sha256": hashlib.sha256(data).hexdigest(),
                "content_b64": base64.b64encode(data).decode(),
            }
        return {"name": CALLS_FILE, "sha256": self.http.upload_bytes(data, CALLS_FILE)["sha256"]}

    def _task_document(
        self, calls: dict[str, Any], job_parameters: list[dict[str, Any]], n_calls: int
    ) -> dict[str, Any]:
        return {
            "transform": "pyfunc",
            "taskName": f"{self.task_name} ({n_calls} calls)",
            "outDS": f"user.{self._user()}.pyfunc.{time.time_ns()}",
            "containerImage": self.image,
            "site": self.site,
            "inputs": [calls],
            "outputs": [RESULTS_FILE],
            "jobParameters": job_parameters,
            "transformArgs": {
                "python": self.python.model_dump(),
                "serializer": self.serializer,
                "calls_file": CALLS_FILE,
                "max_result_bytes": self.max_result_bytes,
            },
            **self._task_options,
        }

    def _user(self) -> str:
        if self._owner is None:
            self._owner = str(self.http.get("/api/v1/whoami")["user"])
        return self._owner

    def _check_submission(self) -> None:
        """The first call: a dry run of a task as this executor sends them, so that the
        harvester's refusal (site, image, token, Python) is raised by ``submit``."""
        if self._checked:
            return
        document = self._task_document(self._calls_input(PROBE), [{"calls": [0, 1]}], 1)
        self.http.post("/api/v1/tasks/check", document)
        self._checked = True

    # -- following tasks ---------------------------------------------------------------

    def _follow(
        self, task_id: int, futures: dict[int, CallFuture], spans: dict[int, tuple[int, int]]
    ) -> None:
        task = _Task(task_id, futures, spans, open=set(futures))
        with self._lock:
            self._tasks[task_id] = task
        task.thread = threading.Thread(
            target=self._collect, args=(task,), name=f"hpcaf-task-{task_id}", daemon=True
        )
        task.thread.start()

    def _collect(self, task: _Task) -> None:
        """Settle the task's futures as its jobs end (long poll), until none is open."""
        while task.open:
            try:
                reply = JobEndings.model_validate(
                    self.http.get(
                        f"/api/v1/tasks/{task.task_id}/endings",
                        after=task.cursor,
                        wait_s=LONG_POLL_S,
                        inline_max=INLINE_RESULTS_BYTES,
                    )
                )
            except ClientError as exc:
                if exc.status_code is not None and exc.status_code < 500:
                    self._fail_open(task, exc)
                    return
                log.warning("task %s: %s; asking again", task.task_id, exc)
                time.sleep(1.0)
                continue
            task.cursor = reply.cursor
            for job in reply.jobs:
                self._settle_job(task, job)
            if not reply.jobs and reply.task_status in TASK_TERMINAL and task.open:
                self._fail_open(
                    task, ClientError(f"task {task.task_id} ended {reply.task_status.value}")
                )
                return

    def _settle_job(self, task: _Task, job: EndedJob) -> None:
        first, stop = task.spans.get(job.job_index, (0, 0))
        indices = [i for i in range(first, stop) if i in task.open]
        futures = [task.futures[i] for i in indices]
        if job.status is JobStatus.FINISHED:
            records = self._records(job)
            if isinstance(records, Exception):
                for future in futures:
                    _settle_exception(future, records)
            else:
                for index, future in zip(indices, futures, strict=True):
                    self._settle_call(task, job, index, future, records.get(index))
        elif job.status is JobStatus.CANCELLED:
            for future in futures:
                future._settle_cancelled()
        else:
            error = JobFailed(task.task_id, job.job_id, job.pilot_error_code, job.pilot_error_diag)
            for future in futures:
                _settle_exception(future, error)
        task.open.difference_update(indices)

    def _records(self, job: EndedJob) -> dict[int, dict[str, Any]] | Exception:
        output = next((o for o in job.outputs if o.name.endswith("." + RESULTS_FILE)), None)
        if output is None:
            return ClientError(f"job {job.job_id} finished without {RESULTS_FILE}")
        try:
            if output.content_b64 is not None:
                data = base64.b64decode(output.content_b64)
                if hashlib.sha256(data).hexdigest() != output.sha256:
                    raise ValueError("inline results do not match their sha256")
            else:
                data = self.http.fetch(output.sha256)
            return {int(r["index"]): r for r in read_results(data)}
        except Exception as exc:
            return RemoteError(type(exc).__name__, f"cannot read job {job.job_id}'s results", "")

    def _settle_call(
        self,
        task: _Task,
        job: EndedJob,
        index: int,
        future: CallFuture,
        record: dict[str, Any] | None,
    ) -> None:
        if record is None:
            _settle_exception(future, ClientError(f"job {job.job_id} returned no call {index}"))
            return
        if record.get("ok"):
            try:
                value = pickle.loads(record["value"])
            except Exception as exc:
                _settle_exception(
                    future,
                    RemoteError(type(exc).__name__, f"cannot unpickle the result: {exc}", ""),
                )
                return
            self._learn(record)
            _settle_result(future, value)
            return
        _settle_exception(future, _remote_exception(record, task.task_id, job.job_id))

    def _learn(self, record: dict[str, Any]) -> None:
        seconds = record.get("seconds")
        name = record.get("function")
        if isinstance(seconds, float) and isinstance(name, str):
            old = self._seconds.get(name)
            self._seconds[name] = seconds if old is None else 0.8 * old + 0.2 * seconds

    def _fail_open(self, task: _Task, error: Exception) -> None:
        for index in sorted(task.open):
            _settle_exception(task.futures[index], error)
        task.open.clear()

    def _cancelled(self, future: CallFuture) -> None:
        """A future was cancelled: drop its call if unsent, else kill its job once every
        call of that job is cancelled."""
        with self._lock:
            task = self._tasks.get(future.task_id) if future.task_id is not None else None
        if task is None or future.call_index is None:
            return
        for job_index, (first, stop) in task.spans.items():
            if first <= future.call_index < stop:
                calls = [task.futures[i] for i in range(first, stop)]
                if all(f.cancelled() for f in calls):
                    with contextlib.suppress(ClientError):  # ended meanwhile: nothing to kill
                        self.http.post(f"/api/v1/tasks/{task.task_id}/jobs/{job_index}/kill")
                return

    def _all_futures(self) -> list[CallFuture]:
        with self._lock:
            return [f for t in self._tasks.values() for f in t.futures.values()]

    def __repr__(self) -> str:
        return f"<hpcaf.Executor image={self.image} site={self.site} tasks={len(self._tasks)}>"


def _key(function: Any) -> str:
    return f"{getattr(function, '__module__', '')}.{getattr(function, '__qualname__', '')}"


def _remote_exception(record: dict[str, Any], task_id: int, job_id: int) -> BaseException:
    """The call's exception, rebuilt where possible, with the remote traceback attached."""
    text = str(record.get("traceback") or "")
    if record.get("type") == "ResultTooLarge":
        return ResultTooLarge(str(record.get("message")))
    exc: BaseException | None = None
    blob = record.get("exception")
    if blob is not None:
        with contextlib.suppress(Exception):
            exc = pickle.loads(blob)
    if not isinstance(exc, BaseException):
        return RemoteError(
            f"{record.get('module')}.{record.get('type')}", str(record.get("message")), text
        )
    exc.add_note(f"(raised in job {job_id} of task {task_id}; the remote traceback:)\n{text}")
    return exc


def _settle_result(future: CallFuture, value: Any) -> None:
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        if not future.done():
            future.set_result(value)


def _settle_exception(future: CallFuture, error: BaseException) -> None:
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        if not future.done():
            future.set_exception(error)


__all__ = ["CallFuture", "Executor"]
