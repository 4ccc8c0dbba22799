"""Which provider class serves which ``provider =`` name: an explicit table, no string imports."""

from __future__ import annotations

from harvester.config import QueueConfig
from harvester.errors import ConfigError
from harvester.providers.base import Provider
from harvester.providers.local import LocalProvider


def make_provider(queue: QueueConfig) -> Provider:
    """A provider instance for one queue, configured from its ``provider_options``."""
    options = dict(queue.provider_options)
    if queue.provider == "local":
        return LocalProvider(polling_interval_s=float(options.get("polling_interval_s", 2.0)))
    raise ConfigError(f"queue {queue.name}: field provider: {queue.provider!r} is not available")
