"""The user's work directory as a sandbox that travels with the job, as prun ships it.

Everything under ``--workDir`` (default ``.``) goes, except what a job never needs:
version-control and cache folders (:data:`LEFT_OUT_DIRS`), ROOT files and files over
:data:`MAX_FILE_BYTES` unless ``--extFile`` names them, anything ``--excludeFile`` names,
links and special files. The archive is a gzipped tar made the same way every time
(sorted names, no times, no owners), so the same folder gives the same sha256 and the
harvester's content-addressed store keeps it once. The pilot unpacks it, read-write,
into the job's ``/srv/workDir`` before the inputs.
"""

from __future__ import annotations

import fnmatch
import gzip
import io
import os
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from protocol.sandbox import MAX_SANDBOX_BYTES

SANDBOX_NAME = "sandbox.tar.gz"
MAX_FILE_BYTES = 10 * 1024 * 1024
"""Files larger than this stay home unless ``--extFile`` names them (prun leaves large
files out the same way)."""
LEFT_OUT_DIRS = frozenset(
    {
        ".git", ".hg", ".svn", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache",
        ".ipynb_checkpoints", ".venv", "venv", ".cache", ".tox", "node_modules",
        # secrets: a sandbox is stored by the harvester and unpacked on every worker
        ".ssh", ".gnupg", ".aws", ".kube", ".docker", ".hpcaf", ".globus", ".config",
    }
)  # fmt: skip
LEFT_OUT_SUFFIXES = (".root",)
"""ROOT files are data: they reach jobs as inputs, not in the sandbox (``--extFile`` to
override, as in prun)."""


class SandboxError(ValueError):
    """The work directory cannot be shipped; the message says what to change."""


@dataclass
class Sandbox:
    data: bytes
    files: list[str]
    left_out: list[str] = field(default_factory=list)
    """``name (why)`` for each file left out."""

    @property
    def size(self) -> int:
        return len(self.data)


def _matches(relative: str, patterns: list[str]) -> bool:
    name = relative.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(relative, p) or fnmatch.fnmatch(name, p) for p in patterns)


def _candidates(work_dir: Path) -> list[Path]:
    found = []
    for folder, dirs, files in os.walk(work_dir):
        dirs[:] = sorted(d for d in dirs if d not in LEFT_OUT_DIRS)
        found += [Path(folder) / f for f in sorted(files)]
    return found


def pack_work_dir(
    work_dir: Path,
    *,
    ext_files: list[str] = (),  # type: ignore[assignment]
    exclude_files: list[str] = (),  # type: ignore[assignment]
    max_file_bytes: int = MAX_FILE_BYTES,
    max_sandbox_bytes: int = MAX_SANDBOX_BYTES,
) -> Sandbox:
    """The sandbox of ``work_dir``; :class:`SandboxError` when it cannot be shipped."""
    if not work_dir.is_dir():
        raise SandboxError(f"--workDir {work_dir}: not a directory")
    buffer = io.BytesIO()
    files: list[str] = []
    left_out: list[str] = []
    sizes: list[tuple[int, str]] = []
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as zipped,
        tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for path in _candidates(work_dir):
            relative = path.relative_to(work_dir).as_posix()
            info = os.lstat(path)
            named = _matches(relative, list(ext_files))
            if _matches(relative, list(exclude_files)):
                continue
            if not stat.S_ISREG(info.st_mode):
                left_out.append(f"{relative} (not a regular file)")
                continue
            if relative.endswith(LEFT_OUT_SUFFIXES) and not named:
                left_out.append(f"{relative} (a ROOT file: --extFile to ship it)")
                continue
            if info.st_size > max_file_bytes and not named:
                left_out.append(
                    f"{relative} ({info.st_size // 1024 // 1024} MiB > "
                    f"{max_file_bytes // 1024 // 1024} MiB: --extFile to ship it)"
                )
                continue
            entry = tarfile.TarInfo(relative)
            entry.size = info.st_size
            entry.mode = 0o755 if info.st_mode & stat.S_IXUSR else 0o644
            try:
                with path.open("rb") as fh:
                    tar.addfile(entry, fh)
            except OSError as exc:
                raise SandboxError(f"--workDir: cannot read {relative}: {exc}") from exc
            files.append(relative)
            sizes.append((info.st_size, relative))
            if buffer.tell() > max_sandbox_bytes:  # stop reading early: it will not fit
                break
    data = buffer.getvalue()
    if len(data) > max_sandbox_bytes:
        largest = ", ".join(f"{name} ({size // 1024} KiB)" for size, name in sorted(sizes)[-3:])
        raise SandboxError(
            f"the sandbox of --workDir {work_dir} is {len(data) // 1024 // 1024} MiB, over the "
            f"limit of {max_sandbox_bytes // 1024 // 1024} MiB; the largest files: {largest}. "
            "Leave files out with --excludeFile, or submit from a smaller --workDir"
        )
    return Sandbox(data, files, left_out)
