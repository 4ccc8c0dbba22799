"""The warm-worker loop shared by the transforms that serve (``--serve``).

Runs inside the image, standard library only. The pilot writes one request per
line on stdin (``{"workdir": DIR, "env": {...}}``) and reads one
``{"exit_code": N}`` per line on stdout. Each job runs in its work dir exactly
as a one-shot run of the transform would (its output appended to
``payload.log``, the job's environment set for it alone); what the process
keeps between jobs (imports, compiled likelihoods, a function's imports) is the
point of keeping it.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import traceback
from collections.abc import Callable

JobMain = Callable[[list[str]], int]
"""A transform's ``main(argv)``, run once per job."""


def serve(main: JobMain, name: str, argv: list[str]) -> int:
    """Serve jobs until stdin closes; ``argv`` is the transform's one-shot command line."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        code = _serve_one(main, name, argv, request)
        protocol.write(json.dumps({"exit_code": code}) + "\n")
        # What the job left in reference cycles, freed once it has answered: a transform
        # may pause the collector while a job runs (pyhf_fit does), and between jobs the
        # worker allocates too little for Python to collect by itself.
        gc.collect()
    return 0


def _serve_one(main: JobMain, name: str, argv: list[str], request: dict[str, object]) -> int:
    workdir = str(request["workdir"])
    os.chdir(workdir)
    log = os.open("payload.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    saved = os.dup(1), os.dup(2)
    environ = dict(os.environ)
    os.dup2(log, 1)
    os.dup2(log, 2)
    env = request.get("env")
    os.environ.update(env if isinstance(env, dict) else {})
    try:
        print(f"=== {name}: warm worker, job in {workdir}", flush=True)
        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except Exception:
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, log):
            os.close(fd)
        os.environ.clear()
        os.environ.update(environ)
        os.chdir("/")
    return code
