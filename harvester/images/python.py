"""An image's Python, read off its root filesystem without running anything in it.

Read when an image is built, imported or pulled (and, for images cached before
this was recorded, when it is first asked for): ``python3`` is looked up on the
image's ``PATH`` as the container would, its links followed inside the root
filesystem only (an image's link to ``/usr/bin`` means the image's ``/usr/bin``,
never the host's), the version read from the interpreter's file name
(``python3.11``) and cloudpickle's from its ``dist-info`` folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

from protocol.pythons import ImagePython

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
_MAX_LINKS = 40
_INTERPRETER = re.compile(r"^python(\d+\.\d+)$")
_DIST_INFO = re.compile(r"^cloudpickle-([0-9][^-]*)\.dist-info$")


def inspect_python(rootfs: Path, environment: dict[str, str]) -> ImagePython:
    """The image's ``python3`` and cloudpickle (each ``None`` when absent)."""
    for folder in (environment.get("PATH") or DEFAULT_PATH).split(":"):
        if not folder.startswith("/"):
            continue
        candidate = str(PurePosixPath(folder) / "python3")
        resolved = _resolve_inside(rootfs, candidate)
        if resolved is None:
            continue
        match = _INTERPRETER.match(PurePosixPath(resolved).name)
        version = match.group(1) if match else _version_from_pyvenv(rootfs, candidate)
        if version is None:
            continue
        return ImagePython(
            executable=candidate,
            version=version,
            cloudpickle=_cloudpickle_version(rootfs, candidate, resolved, version),
        )
    return ImagePython(executable=None, version=None, cloudpickle=None)


def _resolve_inside(rootfs: Path, path: str) -> str | None:
    """``path`` (absolute, in the image) with its links followed inside ``rootfs``; the
    final file's path in the image, or ``None`` when it is not a regular file there."""
    parts = list(PurePosixPath(path).parts[1:])
    current = PurePosixPath("/")
    hops = 0
    while parts:
        part = parts.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            current = current.parent
            continue
        step = current / part
        host = rootfs / str(step).lstrip("/")
        if host.is_symlink():
            hops += 1
            if hops > _MAX_LINKS:
                return None
            target = PurePosixPath(os.readlink(host))
            parts = list(target.parts[1:] if target.is_absolute() else target.parts) + parts
            if target.is_absolute():
                current = PurePosixPath("/")
            continue
        if not host.exists():
            return None
        current = step
    host = rootfs / str(current).lstrip("/")
    return str(current) if host.is_file() else None


def _version_from_pyvenv(rootfs: Path, candidate: str) -> str | None:
    """A venv's ``python3`` may be a copy: its ``pyvenv.cfg`` says the version."""
    config = rootfs / str(PurePosixPath(candidate).parent.parent).lstrip("/") / "pyvenv.cfg"
    try:
        text = config.read_text()
    except OSError:
        return None
    match = re.search(r"^version(?:_info)?\s*=\s*(\d+\.\d+)", text, re.MULTILINE)
    return match.group(1) if match else None


def _cloudpickle_version(rootfs: Path, candidate: str, resolved: str, version: str) -> str | None:
    """cloudpickle's version in the site-packages this Python reads (a venv's, the
    system's), or ``None``."""
    prefixes = {PurePosixPath(candidate).parent.parent, PurePosixPath(resolved).parent.parent}
    folders = [
        str(prefix / "lib" / f"python{version}" / "site-packages") for prefix in sorted(prefixes)
    ]
    folders += [
        f"/usr/local/lib/python{version}/dist-packages",
        "/usr/lib/python3/dist-packages",
    ]
    for folder in folders:
        host = rootfs / folder.lstrip("/")
        if not host.is_dir() or host.is_symlink():
            continue
        for entry in sorted(host.iterdir()):
            match = _DIST_INFO.match(entry.name)
            if match:
                return match.group(1)
    return None
