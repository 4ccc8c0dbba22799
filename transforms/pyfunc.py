#!/usr/bin/env python3
"""pyfunc: run Python function calls sent by ``hpcaf.Executor``; one job runs a range of them.

Runs inside the image: the standard library, plus cloudpickle for calls sent by
value. Reads ``job.json`` (written by the pilot): ``transform_args`` names the
calls file (staged in by the pilot, one per batch of calls: a pickled header
``{"format": 2, "serializer", "python", "count"}``, then one pickle per call)
and ``job_parameters.calls`` the range ``[first, stop)`` of calls this job runs.

Writes ``results.pkl``: a plain pickle (protocol 4) of one record per call,
``{"index", "ok": True, "value": <pickled result>, "seconds"}`` or
``{"index", "ok": False, "type", "module", "message", "traceback", "exception"}``.
An exception raised by a call is a result, not a failure of the job; the job
fails (exit 65) only when its calls cannot be read at all.

The calls of one job share the argument objects they shared in the client (one
pickle, as the calls of a local executor share them); the next job unpickles
afresh, so no call sees what a call of another job did to its arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import time
import traceback
from typing import Any

EXIT_BAD_CALLS = 65
FORMAT = 2
RESULT_PROTOCOL = 4


def load_calls(path: str, serializer: str) -> list[tuple[Any, tuple[Any, ...], dict[str, Any]]]:
    """The calls of the file at ``path`` as ``(function, args, kwargs)``: a header, then one
    pickle per call, read with one unpickler (the calls share its memo)."""
    with open(path, "rb") as fh:
        header = pickle.load(fh)
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise ValueError(f"{path}: not an hpcaf calls file of format {FORMAT}")
        if header.get("serializer") != serializer:
            found = header.get("serializer")
            raise ValueError(f"{path}: calls pickled by {found}, not {serializer}")
        if serializer == "cloudpickle":
            import cloudpickle  # noqa: F401 - what the calls' pickles refer to
        reader = pickle.Unpickler(fh)
        calls = [reader.load() for _ in range(int(header["count"]))]
    if serializer == "cloudpickle":
        return calls
    functions = {key: _define(source, name) for key, (source, name) in header["functions"].items()}
    return [(functions[key], args, kwargs) for key, args, kwargs in calls]


def _define(source: str, name: str) -> Any:
    """A function sent by source: its module-level text run in a fresh namespace."""
    namespace: dict[str, Any] = {"__name__": "__hpcaf_source__"}
    exec(
        compile(source, f"<function {name}>", "exec"), namespace
    )  # the user's code, their container
    return namespace[name]


def dumps_value(value: Any, serializer: str) -> bytes:
    if serializer == "cloudpickle":
        import cloudpickle

        return bytes(cloudpickle.dumps(value, protocol=RESULT_PROTOCOL))
    return pickle.dumps(value, protocol=RESULT_PROTOCOL)


def run_call(
    index: int, call: tuple[Any, tuple[Any, ...], dict[str, Any]], serializer: str, limit: int
) -> dict[str, Any]:
    """One call's record: its pickled value, or the exception it raised."""
    function, args, kwargs = call
    name = f"{getattr(function, '__module__', '')}.{getattr(function, '__qualname__', '')}"
    start = time.perf_counter()
    try:
        value = function(*args, **kwargs)
        blob = dumps_value(value, serializer)
        if len(blob) > limit:
            raise ResultTooLarge(
                f"the result of call {index} is {len(blob)} bytes pickled, over the limit of "
                f"{limit} bytes (max_result_bytes); return less, or write a file"
            )
        seconds = time.perf_counter() - start
        return {"index": index, "ok": True, "value": blob, "seconds": seconds, "function": name}
    except Exception as exc:  # the call's own exception is its result
        return error_record(index, exc, serializer, time.perf_counter() - start)


class ResultTooLarge(Exception):
    """A call's pickled result is over the task's limit."""


def error_record(index: int, exc: BaseException, serializer: str, seconds: float) -> dict[str, Any]:
    try:
        pickled = dumps_value(exc, serializer)
        pickle.loads(pickled)
        blob: bytes | None = (
            pickled  # an exception that pickles but cannot be rebuilt is sent as text
        )
    except Exception:
        blob = None
    return {
        "index": index,
        "ok": False,
        "type": type(exc).__qualname__,
        "module": type(exc).__module__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
        "exception": blob,
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="run Python function calls (hpcaf transform)")
    parser.add_argument("--job", default="job.json")
    parser.add_argument("--output", default="results.pkl")
    parser.add_argument("--serve", action="store_true", help="run as a warm worker")
    args = parser.parse_args(argv)
    if args.serve:
        from serving import serve

        return serve(main, "pyfunc", ["--job", "job.json", "--output", "results.pkl"])
    with open(args.job) as fh:
        job = json.load(fh)
    options = job.get("transform_args") or {}
    serializer = str(options.get("serializer", "cloudpickle"))
    limit = int(options.get("max_result_bytes", 64 << 20))
    first, stop = (job.get("job_parameters") or {}).get("calls", [0, 0])
    started = time.perf_counter()
    try:
        calls = load_calls(str(options.get("calls_file", "calls.pkl")), serializer)
    except Exception as exc:
        print(
            f"pyfunc: cannot read the calls ({type(exc).__name__}: {exc}); Python "
            f"{sys.version.split()[0]} in this image",
            file=sys.stderr,
        )
        return EXIT_BAD_CALLS
    loaded = time.perf_counter() - started
    span = range(first, min(stop, len(calls)))
    records = [run_call(i, calls[i], serializer, limit) for i in span]
    with open(args.output + ".part", "wb") as fh:
        pickle.dump(records, fh, protocol=RESULT_PROTOCOL)
    os.replace(args.output + ".part", args.output)
    failed = sum(1 for r in records if not r["ok"])
    print(
        f"pyfunc: calls {first}..{stop - 1}: {len(records) - failed} returned, {failed} raised "
        f"(calls read in {loaded * 1000:.1f} ms, run in "
        f"{(time.perf_counter() - started - loaded) * 1000:.1f} ms)",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
