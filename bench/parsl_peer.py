"""Parsl's HighThroughputExecutor as the benchmarks' peer: the same set-up for every one.

One block on the local machine, ``workers`` workers of one core and one BLAS
thread each, the workers started from this interpreter's environment (its
``process_worker_pool.py`` first on ``PATH``), so that they import what this
process imports.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def htex(workers: int, python_path: tuple[Path, ...] = ()) -> Iterator[Any]:
    """A loaded Parsl HTEX; yields the executor (``submit(fn, {}, *args)``). ``python_path``:
    folders the workers import from (functions sent by name)."""
    import parsl
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import LocalProvider

    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    if python_path:
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [*map(str, python_path), os.environ.get("PYTHONPATH", "")]
        )
    config = Config(
        executors=[
            HighThroughputExecutor(
                label="htex",
                max_workers_per_node=workers,
                cores_per_worker=1,
                provider=LocalProvider(
                    init_blocks=1,
                    max_blocks=1,
                    worker_init="export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1",
                ),
            )
        ],
        run_dir=tempfile.mkdtemp(prefix="parsl-"),
    )
    dfk = parsl.load(config)
    try:
        yield dfk.executors["htex"]
    finally:
        dfk.cleanup()
        parsl.clear()
