"""JAX's lowerings in reused MLIR contexts (``transforms/jax_contexts.py``) make the same
programs as in JAX's own new context per lowering: the same lowered text, the same keys
in a site's persistent compilation cache, the same CLs to the last bit.

Each check runs in a process of its own (the reuse changes a JAX function for the
whole process), with pyhf's JAX backend as a fit uses it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.helpers import REPO

PRELUDE = f"""
import json, sys
sys.path.insert(0, {str(REPO / "transforms")!r})
import jax
jax.config.update("jax_enable_x64", True)
from jax._src.interpreters import mlir
import jax_contexts

MADE = [0]
_jax_own = mlir.make_ir_context


def counted():
    MADE[0] += 1
    return _jax_own()


mlir.make_ir_context = counted


def fit():
    import pyhf

    pyhf.set_backend("jax")
    model = pyhf.simplemodels.uncorrelated_background(
        [6.0, 9.0, 4.0], [55.0, 48.0, 30.0], [7.0, 6.0, 5.0]
    )
    data = [58.0, 60.0, 31.0] + model.config.auxdata
    obs, exp = pyhf.infer.hypotest(1.0, data, model, test_stat="qtilde", return_expected_set=True)
    return [float(obs).hex()] + [float(x).hex() for x in exp]
"""


def run_script(body: str, env: dict[str, str] | None = None) -> Any:
    """Run ``PRELUDE + body`` in a new process; its last stdout line, as JSON."""
    done = subprocess.run(
        [sys.executable, "-c", PRELUDE + body],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_reused_contexts_lower_the_same_programs_in_fewer_contexts() -> None:
    out = run_script(
        """
import jax.numpy as jnp


def lowered():
    return [
        jax.jit(lambda x: jnp.sin(x) * 3.0).lower(jnp.ones(4)).as_text(),
        jax.jit(lambda x, y: x @ y).lower(jnp.ones((3, 2)), jnp.ones(2)).as_text(),
        jax.jit(lambda x: jnp.take(x, jnp.array([2, 0]))).lower(jnp.ones(3)).as_text(),
    ]


own = lowered()
made_own = MADE[0]
assert jax_contexts.reuse_ir_contexts()
MADE[0] = 0
reused = lowered()
made_reused = MADE[0]
jax_contexts.LOWERINGS_PER_CONTEXT = 1
MADE[0] = 0
renewed = lowered()
print(json.dumps({"same": own == reused == renewed, "made_own": made_own,
                  "made_reused": made_reused, "made_renewed": MADE[0]}))
"""
    )
    assert out["same"]
    assert out["made_own"] >= 3  # JAX's own way: a context per lowering
    assert out["made_reused"] == 1
    assert out["made_renewed"] >= 3  # renewed after each lowering when the bound is one


def test_a_site_cache_filled_without_reuse_serves_a_worker_with_it(tmp_path: Path) -> None:
    """Process one fits with JAX's own contexts and fills a persistent cache; process two
    fits with reused contexts: it finds every program in the cache (it writes none)
    and reports the same CLs, bit for bit."""
    cache = tmp_path / "cache"
    env = {
        "JAX_COMPILATION_CACHE_DIR": str(cache),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
    own = run_script(
        'print(json.dumps({"cls": fit(), "made": MADE[0]}))',
        env,
    )
    filled = sorted(p.name for p in cache.iterdir())
    reused = run_script(
        "assert jax_contexts.reuse_ir_contexts()\n"
        'print(json.dumps({"cls": fit(), "made": MADE[0]}))',
        env,
    )
    assert len(filled) > 20  # pyhf's eager operations and the fits: many programs
    assert own["made"] >= len(filled)
    assert sorted(p.name for p in cache.iterdir()) == filled
    assert reused["cls"] == own["cls"]
    assert reused["made"] <= 1 + own["made"] // 256


def test_each_thread_has_its_own_context_and_another_jax_is_left_alone() -> None:
    out = run_script(
        """
import threading

assert jax_contexts.reuse_ir_contexts()
assert jax_contexts.reuse_ir_contexts()  # a second call installs nothing more
seen = {}


def take(name):
    seen[name] = (mlir.make_ir_context(), mlir.make_ir_context())


threads = [threading.Thread(target=take, args=(n,)) for n in "ab"]
for t in threads:
    t.start()
for t in threads:
    t.join()
mlir.make_ir_context = counted
jax.__version__ = "0.0.0"
print(json.dumps({
    "kept_in_a_thread": all(seen[n][0] is seen[n][1] for n in "ab"),
    "shared_between_threads": seen["a"][0] is seen["b"][0],
    "other_release": jax_contexts.reuse_ir_contexts(),
    "left_alone": mlir.make_ir_context is counted,
}))
"""
    )
    assert out["kept_in_a_thread"]
    assert not out["shared_between_threads"]
    assert out["other_release"] is False
    assert out["left_alone"]
