"""Stage-in (inputs into the work dir) and stage-out (declared outputs to the server)."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import stat
import tarfile
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from pilot.link import HarvesterLink, ServerError
from protocol.error_codes import PilotErrorCode
from protocol.files import INLINE_FILE_MAX_BYTES, InputFile
from protocol.sandbox import MAX_SANDBOX_MEMBERS, MAX_SANDBOX_UNPACKED_BYTES


class StageError(Exception):
    def __init__(self, code: PilotErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def stage_in(
    server: HarvesterLink, inputs: list[InputFile], workdir: Path, cache: Path | None = None
) -> None:
    """Every input by checksum into the work dir (verified).

    With ``cache`` (a folder of the pilot's that no container sees), each content is
    downloaded once per pilot and copied into the work dirs of the jobs that need it
    (a pallet shared by a campaign's jobs, the calls file shared by a batch's jobs).
    Copied, not linked: a payload that writes to its input changes only its copy.
    """
    for item in inputs:
        name = item.name
        if "/" in name or name.startswith("."):
            raise StageError(PilotErrorCode.STAGEIN_FAILED, f"refusing input name {name!r}")
        try:
            if cache is None:
                server.download(item.sha256, workdir / name)
                continue
            kept = cache / item.sha256
            if not kept.is_file():
                cache.mkdir(parents=True, exist_ok=True)
                partial = cache / f".{item.sha256}.{threading.get_ident()}"
                server.download(item.sha256, partial)
                os.replace(partial, kept)  # whole and verified, or not there
            shutil.copyfile(kept, workdir / name)
        except ServerError as exc:
            raise StageError(PilotErrorCode.STAGEIN_FAILED, f"input {name}: {exc}") from exc


def unpack_sandbox(server: HarvesterLink, sandbox: InputFile, workdir: Path) -> int:
    """The user's work directory (``pcontainer --workDir``) unpacked into the work dir;
    returns the number of files."""
    with tempfile.TemporaryDirectory(dir=workdir.parent, prefix=".sandbox-") as scratch:
        archive = Path(scratch) / "sandbox.tar.gz"
        try:
            server.download(sandbox.sha256, archive)
        except ServerError as exc:
            raise StageError(PilotErrorCode.STAGEIN_FAILED, f"sandbox: {exc}") from exc
        return extract_sandbox(archive, workdir)


def extract_sandbox(archive: Path, workdir: Path) -> int:
    """Unpack ``archive`` below ``workdir``: regular files and folders only. A member that
    is a link, a device, an absolute path or climbs out with ``..`` fails the stage-in
    before anything is written (a link unpacked first could carry a later member out of
    the work dir onto the pilot's host)."""
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member)
            unpacked = sum(m.size for m in members)
            if len(members) > MAX_SANDBOX_MEMBERS or unpacked > MAX_SANDBOX_UNPACKED_BYTES:
                raise StageError(
                    PilotErrorCode.STAGEIN_FAILED,
                    f"sandbox: {len(members)} members, {unpacked} bytes unpacked: over the "
                    f"limits ({MAX_SANDBOX_MEMBERS} members, {MAX_SANDBOX_UNPACKED_BYTES} bytes)",
                )
            files = 0
            for member in members:
                target = workdir.joinpath(*PurePosixPath(member.name).parts)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None  # a regular file, checked above
                with source, target.open("wb") as out:
                    while chunk := source.read(1 << 20):
                        out.write(chunk)
                target.chmod(0o755 if member.mode & 0o100 else 0o644)
                files += 1
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise StageError(PilotErrorCode.STAGEIN_FAILED, f"sandbox: {exc}") from exc
    return files


def _check_member(member: tarfile.TarInfo) -> None:
    path = PurePosixPath(member.name)
    if not (member.isfile() or member.isdir()):
        raise StageError(
            PilotErrorCode.STAGEIN_FAILED, f"sandbox: {member.name!r} is not a file or folder"
        )
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise StageError(
            PilotErrorCode.STAGEIN_FAILED, f"sandbox: {member.name!r} points outside the work dir"
        )


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


def stage_out(
    server: HarvesterLink, outputs: list[str], workdir: Path, carry: Carry | None = None
) -> list[dict[str, Any]]:
    """Every declared output for the final update (``[{name, sha256, size, ...}]``)."""
    staged = []
    for name in outputs:
        path = collect_output(workdir, name)
        try:
            staged.append(report_entry(server, path, name, carry))
        except ServerError as exc:
            raise StageError(PilotErrorCode.STAGEOUT_FAILED, f"output {name}: {exc}") from exc
    return staged


@dataclass
class Carry:
    """What one final report may still carry of its files' content (bytes): at most
    ``INLINE_FILE_MAX_BYTES`` in all, so a report stays far below any request ceiling."""

    left: int = INLINE_FILE_MAX_BYTES


def report_entry(
    server: HarvesterLink, path: Path, name: str, carry: Carry | None = None
) -> dict[str, Any]:
    """A file as the final report names it: small enough for what the report may still
    carry, its content goes in the report (no request of its own); else uploaded first."""
    if carry is not None and carry.left > 0:
        with path.open("rb") as fh:
            head = fh.read(carry.left + 1)
        if len(head) <= carry.left:
            carry.left -= len(head)
            return {
                "name": name,
                "sha256": hashlib.sha256(head).hexdigest(),
                "size": len(head),
                "content_b64": base64.b64encode(head).decode(),
            }
    reply = server.upload(path, name)
    return {"name": name, "sha256": reply["sha256"], "size": reply["size"]}


def stage_out_partial(
    server: HarvesterLink, outputs: list[str], workdir: Path, carry: Carry | None = None
) -> list[dict[str, Any]]:
    """The outputs a failed payload did write, uploaded best-effort (kept if no retry follows)."""
    kept = []
    for name in outputs:
        try:
            kept += stage_out(server, [name], workdir, carry)
        except StageError:
            continue
    return kept
