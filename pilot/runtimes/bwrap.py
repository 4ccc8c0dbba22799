"""bubblewrap: an unpacked image root, read-only, with nothing shared unless asked."""

from __future__ import annotations

from pilot.runtimes.base import (
    DEFAULT_PATH,
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
        env = {"PATH": DEFAULT_PATH, "HOME": WORKDIR_IN_CONTAINER, "TMPDIR": "/tmp", **request.env}
        for key, value in env.items():
            cmd += ["--setenv", key, value]
        cmd += request.extra_options
        cmd += ["--", *request.argv]
        return cmd
