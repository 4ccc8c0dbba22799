"""Which provider class serves which ``provider =`` name: an explicit table, no string imports.

Provider options are validated here when the service starts, so a queue with a
bad option stops the harvester with a message naming the queue and the field.
"""

from __future__ import annotations

from pydantic import ValidationError

from harvester.config import QueueConfig
from harvester.errors import ConfigError
from harvester.providers.base import Provider, WorkerResources
from harvester.providers.htcondor import HTCondorOptions, HTCondorProvider
from harvester.providers.local import LocalProvider
from harvester.providers.parsl_bridge import ParslOptions, ParslProvider, build_parsl_provider
from harvester.providers.slurm import SlurmOptions, SlurmProvider


def make_provider(queue: QueueConfig, *, check_nodes: bool = True) -> Provider:
    """A provider instance for one queue, configured from its ``provider_options``.

    With ``check_nodes``, a Slurm queue asking for more cores than the partition's
    largest node has is refused (when Slurm answers).
    """
    options = dict(queue.provider_options)
    try:
        if queue.provider == "local":
            return LocalProvider(polling_interval_s=float(options.get("polling_interval_s", 2.0)))
        if queue.provider == "slurm":
            slurm = SlurmProvider(SlurmOptions(**options))
            node = slurm.largest_node() if check_nodes else None
            if node is not None and queue.cores > node[0]:
                raise ConfigError(
                    f"queue {queue.name}: field cores: {queue.cores} cores per slot but the "
                    f"largest node of partition {slurm.options.partition} has {node[0]}"
                )
            return slurm
        if queue.provider == "htcondor":
            if queue.gpu_nodes and "require_gpus" not in options:
                # every slot must offer at least the smallest declared GPU memory
                smallest = min(n.vram_mb for n in queue.gpu_nodes)
                options["require_gpus"] = f"GlobalMemoryMb >= {smallest}"
            return HTCondorProvider(HTCondorOptions(**options))
        if queue.provider == "parsl":
            parsl_options = ParslOptions(**options)
            slot = WorkerResources(
                cores=queue.cores,
                memory_mb=queue.memory_mb,
                walltime_s=queue.walltime_s,
                gpus=queue.gpus,
            )
            parsl = build_parsl_provider(queue.name, parsl_options, slot)
            return ParslProvider(parsl, parsl_options.polling_interval_s)
    except ValidationError as exc:
        problems = "; ".join(
            f"field provider_options.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"queue {queue.name}: {problems}") from exc
    raise ConfigError(f"queue {queue.name}: field provider: {queue.provider!r} is not available")
