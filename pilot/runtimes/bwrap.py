"""bubblewrap: an unpacked image root, read-only, with nothing shared unless asked."""

from __future__ import annotations

from pilot.runtimes.base import (
    DEFAULT_PATH,
    NVIDIA_IN_CONTAINER,
    TRANSFORMS_IN_CONTAINER,
    WORKDIR_IN_CONTAINER,
    ContainerRequest,
    ContainerRuntime,
)


class BubblewrapRuntime(ContainerRuntime):
    """``bwrap --unshare-all`` over the image directory: no network, a read-only image,
    the work dir the only writable place (besides a private /tmp)."""

    name = "bwrap"

    def command(self, request: ContainerRequest) -> list[str]:
        cmd = [
            "bwrap",
            "--ro-bind",
            str(request.image),
            "/",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--tmpfs",
            "/tmp",
            "--bind",
            str(request.workdir),
            WORKDIR_IN_CONTAINER,
            "--ro-bind",
            str(request.transforms_dir),
            TRANSFORMS_IN_CONTAINER,
        ]
        for bind in request.binds:
            cmd += ["--bind" if bind.writable else "--ro-bind", bind.source, bind.target]
        env_extra: dict[str, str] = {}
        if request.gpu:
            for device in request.devices:
                cmd += ["--dev-bind", device, device]
            if request.gpu_libraries and (request.image / NVIDIA_IN_CONTAINER.lstrip("/")).is_dir():
                # the driver's user-space libraries, as nvidia-container-cli would mount them
                cmd += ["--tmpfs", NVIDIA_IN_CONTAINER]
                for library in request.gpu_libraries:
                    name = library.rsplit("/", 1)[-1]
                    cmd += ["--ro-bind", library, f"{NVIDIA_IN_CONTAINER}/lib64/{name}"]
                env_extra["LD_LIBRARY_PATH"] = f"{NVIDIA_IN_CONTAINER}/lib64"
        cmd += ["--unshare-all"]
        if request.allow_network:
            cmd += ["--share-net"]
        cmd += [
            "--die-with-parent",
            "--new-session",
            "--hostname",
            "hpcaf-payload",
            "--chdir",
            WORKDIR_IN_CONTAINER,
            "--clearenv",
        ]
        env = {
            "PATH": DEFAULT_PATH,
            "HOME": WORKDIR_IN_CONTAINER,
            "TMPDIR": "/tmp",
            **env_extra,
            **request.env,
        }
        for key, value in env.items():
            cmd += ["--setenv", key, value]
        cmd += request.extra_options
        cmd += ["--", *request.argv]
        return cmd
