"""JAX's lowerings in one MLIR context per thread, instead of a new context each.

JAX lowers every program to MLIR before it looks in the persistent compilation
cache (the cache's key is the lowered module), and makes a new MLIR context for
every lowering, loading all of its dialects into it: about ten milliseconds each
in a profile on this project's CPUs. A fit's first call lowers some 230 programs
(236 in a staus job, as the bench counts them), because pyhf builds
and evaluates a JAX model with eager operations and each new shape is a program
of its own; so a worker process spent seconds making contexts on a site whose
cache already held every one of those programs (``bench/worker_overheads.py``
measures what reusing them spares).

:func:`reuse_ir_contexts` makes JAX's ``make_ir_context`` hand out one context per
thread, renewed after :data:`LOWERINGS_PER_CONTEXT` lowerings. Why that is safe:

- a module lives in the context it was made in and keeps it alive; JAX's
  ``ModuleContext`` takes a context given to it (``jax.export`` gives one), so
  several modules in one context are a case JAX itself has;
- the programs are the same: the lowered text and the cache key do not depend on
  the context (``tests/test_jax_contexts.py`` compares them with JAX's own way,
  and the fit-truth tests compare every CLs with pyhf run directly);
- a context is never built in from two threads (one per thread);
- what a context keeps (the types and attributes it interns, a module's constants
  among them) is bounded by renewing it.

The change is pinned to the JAX release whose ``jax/_src/interpreters/mlir.py`` was
read (:data:`JAX_VERSION_READ`): any other release is left as it is (slower, never
different).

Runs inside the fit image: standard library and jax only.
"""

from __future__ import annotations

import threading
from typing import Any

JAX_VERSION_READ = "0.10.2"
"""The JAX whose ``make_ir_context`` and its callers were read."""

LOWERINGS_PER_CONTEXT = 256
"""Lowerings one context serves before it is replaced: a staus job's first fit lowers
about 230 programs, and a context's interned constants stay bounded by this many
programs' worth."""

_MARK = "hpcaf_reuses_contexts"


class _ThreadContext(threading.local):
    """This thread's context and how many lowerings it served."""

    context: Any = None
    lowerings = 0


def reuse_ir_contexts() -> bool:
    """Install the reuse (once per process); ``False`` where the JAX release is not the
    one read, which keeps JAX's own way."""
    import jax
    from jax._src.interpreters import mlir

    if jax.__version__ != JAX_VERSION_READ:
        return False
    if getattr(mlir.make_ir_context, _MARK, False):
        return True
    make_new = mlir.make_ir_context
    current = _ThreadContext()

    def make_ir_context() -> Any:
        if current.context is None or current.lowerings >= LOWERINGS_PER_CONTEXT:
            current.context = make_new()
            current.lowerings = 0
        current.lowerings += 1
        return current.context

    setattr(make_ir_context, _MARK, True)
    mlir.make_ir_context = make_ir_context
    return True
