"""What runs in a job's container: the transform's command line, its environment,
binds and devices, whichever way the job is then executed.

The transforms' folder is bound read-only into every container; the pilot's
cache (e.g. JAX compilations) is shared by one user's jobs, each user having
their own, where the image has the mount point for it. A site may name a
compilation cache on its shared filesystem (``compileCache`` of a queue): then
each user's compilations are shared by all of the site's pilots, so a model is
compiled once per site rather than once per pilot.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from pathlib import Path

from pilot.gpus import Gpu, device_nodes, driver_libraries
from pilot.runtimes.base import CACHE_IN_CONTAINER, Bind, ContainerRequest
from protocol.pilot import JobSpec

THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "XLA_FLAGS_CPU_THREADS",
)


def transforms_dir() -> Path:
    """The folder of the ``transforms`` package, bound read-only into every container.

    Found with ``find_spec``, not imported: the transforms run inside the images,
    never in the pilot, and the pilot imports none of their code.
    """
    spec = importlib.util.find_spec("transforms")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("No module named 'transforms'", name="transforms")
    return Path(spec.origin).parent


def transform_argv(spec: JobSpec) -> list[str]:
    """The command that runs inside the image for the job's transform."""
    script = f"/srv/transforms/{spec.transform}.py"
    if spec.transform == "runcontainer":
        return ["python3", script, "--exec", spec.exec]
    return ["python3", script, "--job", "job.json"]


def owner_cache(base_dir: Path, owner: str) -> Path:
    """The pilot's cache for one user's jobs (their warm work dirs, JAX compilations).

    Each user has a cache of their own: the jobs of one user, which may run at the
    same time as another's in a whole-node pilot, can neither read nor change what
    another user's jobs and warm workers keep there.
    """
    return base_dir / "cache" / owner_folder(owner)


def owner_folder(owner: str) -> str:
    """A folder name for ``owner``: the name itself when it is a safe one, else a digest."""
    if re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", owner) and owner not in (".", ".."):
        return owner
    return "u-" + hashlib.sha256(owner.encode()).hexdigest()[:16]


def site_compilations(compile_cache: Path, owner: str) -> Path:
    """One user's folder in the site's compilation cache.

    Per user, as the pilot's own cache is: a compiled program is machine code that
    the next job loads and runs, so one user's jobs must never load what another's
    wrote.
    """
    return compile_cache / owner_folder(owner) / "jax"


def has_cache_mount(image: Path) -> bool:
    """Whether the image has the mount point for the pilot's shared cache."""
    return (image / CACHE_IN_CONTAINER.lstrip("/")).is_dir()


def container_request(
    spec: JobSpec,
    image: Path,
    workdir: Path,
    gpus: list[Gpu],
    cache_dir: Path,
    compile_cache: Path | None = None,
) -> ContainerRequest:
    """The container for ``spec``'s payload in ``workdir``, on a node with ``gpus``;
    ``compile_cache``: the site's shared compilation cache, if it has one."""
    cores = max(1, spec.cores)
    env = {**spec.image_environment, **spec.env}
    env.update({name: str(cores) for name in THREAD_VARIABLES})
    gpu_job = spec.gpus > 0
    devices = device_nodes(gpus) if gpu_job else []
    if gpu_job:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(g.uuid for g in gpus)
    if has_cache_mount(image):
        env["JAX_COMPILATION_CACHE_DIR"] = f"{CACHE_IN_CONTAINER}/jax"
    return ContainerRequest(
        image=image,
        argv=transform_argv(spec),
        workdir=workdir,
        transforms_dir=transforms_dir(),
        env=env,
        binds=[
            *[Bind.parse(b) for b in spec.container.binds],
            *_cache_binds(image, cache_dir, spec.owner, compile_cache),
        ],
        allow_network=spec.container.allow_network,
        gpu=gpu_job,
        devices=devices,
        gpu_libraries=driver_libraries() if devices else [],
        extra_options=list(spec.container.options),
    )


def _cache_binds(
    image: Path, cache_dir: Path, owner: str, compile_cache: Path | None
) -> list[Bind]:
    """The user's cache in the pilot, shared by their jobs, where the image has the mount
    point for it; over its ``jax`` folder, the user's folder of the site's compilation
    cache when there is one (bound after, so it is the one the container sees)."""
    if not has_cache_mount(image):
        return []
    (cache_dir / "jax").mkdir(parents=True, exist_ok=True)
    binds = [Bind(str(cache_dir), CACHE_IN_CONTAINER, writable=True)]
    if compile_cache is not None:
        shared = site_compilations(compile_cache, owner)
        shared.mkdir(parents=True, exist_ok=True)
        binds.append(Bind(str(shared), f"{CACHE_IN_CONTAINER}/jax", writable=True))
    return binds
