"""How long an idle pilot waits before asking for work again.

A pilot that found nothing polls again after ``first`` seconds, then backs off
geometrically up to ``cap``, each wait jittered so that a fleet started
together does not poll in lock-step. Any job resets it. A thousand idle pilots
then cost the dispatcher tens of requests a second, not a thousand, while a
newly activated job still waits no longer than one poll of a busy pilot.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class PollBackoff:
    """Waits between empty acquires: ``first``, then ``factor`` times the last, at most ``cap``."""

    first: float = 1.0
    cap: float = 30.0
    factor: float = 1.5
    jitter: float = 0.25
    """Each wait is drawn uniformly within ±``jitter`` of its nominal value."""
    rng: random.Random = field(default_factory=random.Random, repr=False)
    _nominal: float = field(default=0.0, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.first <= 0 or self.cap < self.first or self.factor < 1 or not 0 <= self.jitter < 1:
            raise ValueError(
                f"invalid poll backoff: first={self.first} cap={self.cap} "
                f"factor={self.factor} jitter={self.jitter}"
            )

    def next_wait(self) -> float:
        """The wait after one more empty acquire."""
        self._nominal = (
            self.first if self._nominal == 0 else min(self.cap, self._nominal * self.factor)
        )
        return self._nominal * self.rng.uniform(1 - self.jitter, 1 + self.jitter)

    def reset(self) -> None:
        """A job came: the next empty acquire waits ``first`` again."""
        self._nominal = 0.0
