"""Counts of failed provider calls, kept by the agents and served on ``/metrics``.

A plain locked counter rather than a Prometheus instrument, so the agents do
not depend on the API's registry; :class:`harvester.api.metrics.Metrics`
exposes it as ``hpcaf_provider_call_failures_total``. It sits beside both,
not in ``harvester/providers/``: the agents count, the API serves, and the
API imports no provider.
"""

from __future__ import annotations

import threading
from collections import Counter

_lock = threading.Lock()
_failures: Counter[tuple[str, str, str]] = Counter()


def record_failure(provider: str, queue: str, call: str) -> None:
    """A ``submit``/``status``/``cancel`` call of ``provider`` for ``queue`` failed."""
    with _lock:
        _failures[(provider, queue, call)] += 1


def failures() -> dict[tuple[str, str, str], int]:
    with _lock:
        return dict(_failures)
