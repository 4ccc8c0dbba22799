"""Apptainer / Singularity: ``exec`` as pilot3 builds it, with ``--nv`` for GPU jobs."""

from __future__ import annotations

from pilot.runtimes.base import (
    TRANSFORMS_IN_CONTAINER,
    WORKDIR_IN_CONTAINER,
    ContainerRequest,
    ContainerRuntime,
)


class ApptainerRuntime(ContainerRuntime):
    """``apptainer exec --containall --cleanenv``: contained file systems, PID and IPC,
    a clean environment, the work dir bound at /srv/workDir; no network unless allowed."""

    name = "apptainer"

    def command(self, request: ContainerRequest) -> list[str]:
        cmd = [
            self.name,
            "exec",
            "--containall",
            "--cleanenv",
            "--pwd",
            WORKDIR_IN_CONTAINER,
            "-B",
            f"{request.workdir}:{WORKDIR_IN_CONTAINER}",
            "-B",
            f"{request.transforms_dir}:{TRANSFORMS_IN_CONTAINER}:ro",
        ]
        for bind in request.binds:
            cmd += ["-B", f"{bind.source}:{bind.target}:{'rw' if bind.writable else 'ro'}"]
        if not request.allow_network:
            cmd += ["--net", "--network", "none"]
        if request.gpu:
            cmd += ["--nv"]
        for key, value in {"HOME": WORKDIR_IN_CONTAINER, **request.env}.items():
            cmd += ["--env", f"{key}={value}"]
        cmd += request.extra_options
        cmd += [str(request.image), *request.argv]
        return cmd


class SingularityRuntime(ApptainerRuntime):
    """The same command line under the older name."""

    name = "singularity"
