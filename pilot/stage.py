"""Stage-in (inputs into the work dir) and stage-out (declared outputs to the server)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from pilot.server import PilotServer, ServerError
from protocol.error_codes import PilotErrorCode
from protocol.files import InputFile


class StageError(Exception):
    def __init__(self, code: PilotErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def stage_in(server: PilotServer, inputs: list[InputFile], workdir: Path) -> None:
    """Download every input by checksum into the work dir (verified)."""
    for item in inputs:
        name = item.name
        if "/" in name or name.startswith("."):
            raise StageError(PilotErrorCode.STAGEIN_FAILED, f"refusing input name {name!r}")
        try:
            server.download(item.sha256, workdir / name)
        except ServerError as exc:
            raise StageError(PilotErrorCode.STAGEIN_FAILED, f"input {name}: {exc}") from exc


def collect_output(workdir: Path, name: str) -> Path:
    """The output file, which must be a regular file directly in the work dir.

    Symlinks are refused: a payload could otherwise point an output at a host
    file outside its container and have the pilot upload it.
    """
    if "/" in name or name in ("", ".", ".."):
        raise StageError(PilotErrorCode.STAGEOUT_FAILED, f"invalid output name {name!r}")
    path = workdir / name
    try:
        info = os.lstat(path)
    except FileNotFoundError as exc:
        raise StageError(
            PilotErrorCode.STAGEOUT_FAILED, f"output {name} was not produced by the payload"
        ) from exc
    if stat.S_ISLNK(info.st_mode):
        raise StageError(PilotErrorCode.STAGEOUT_FAILED, f"output {name} is a symlink; refused")
    if not stat.S_ISREG(info.st_mode):
        raise StageError(PilotErrorCode.STAGEOUT_FAILED, f"output {name} is not a regular file")
    return path


def stage_out(server: PilotServer, outputs: list[str], workdir: Path) -> list[dict[str, Any]]:
    """Upload every declared output; returns ``[{name, sha256, size}]`` for the final update."""
    uploaded = []
    for name in outputs:
        path = collect_output(workdir, name)
        try:
            reply = server.upload(path, name)
        except ServerError as exc:
            raise StageError(PilotErrorCode.STAGEOUT_FAILED, f"output {name}: {exc}") from exc
        uploaded.append({"name": name, "sha256": reply["sha256"], "size": reply["size"]})
    return uploaded


def stage_out_partial(
    server: PilotServer, outputs: list[str], workdir: Path
) -> list[dict[str, Any]]:
    """The outputs a failed payload did write, uploaded best-effort (kept if no retry follows)."""
    kept = []
    for name in outputs:
        try:
            kept += stage_out(server, [name], workdir)
        except StageError:
            continue
    return kept
