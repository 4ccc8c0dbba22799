"""Building images into the cache.

With Apptainer on the host, ``apptainer build --sandbox`` does it. Without,
hpcaf reads the same definition file itself: ``debootstrap`` makes the root
filesystem, ``%post`` runs inside it under bubblewrap with a clean
environment and the host's CA bundle copied in (TLS-inspecting proxies), and
``%environment``/``%runscript``/``%labels`` are written where Apptainer keeps
them. The result is an unpacked root filesystem, as sites serve from cvmfs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harvester.errors import ImageError
from harvester.images.cache import ImageCache, ImageInfo, cache_key
from harvester.images.definition import Definition, read_definition
from harvester.images.python import inspect_python

DEFAULT_MIRROR = "http://deb.debian.org/debian"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BUILD_CA_PATH = "/etc/hpcaf-build-ca.pem"
MOUNT_POINTS = (
    "srv/workDir",
    "srv/transforms",
    "srv/cache",
    "usr/local/nvidia",
    "cvmfs",
    "proc",
    "dev",
    "tmp",
    "sys",
)
BUILD_TIMEOUT_S = 3600

Log = Callable[[str], None]


def host_debian_mirror() -> str:
    """The Debian mirror the host's apt uses (deb822 or one-line sources)."""
    candidates: list[str] = []
    sources_dir = Path("/etc/apt/sources.list.d")
    for path in sorted(sources_dir.glob("*.sources")) if sources_dir.is_dir() else []:
        for line in path.read_text().splitlines():
            if line.startswith("URIs:"):
                candidates += line.split()[1:]
    listing = Path("/etc/apt/sources.list")
    if listing.is_file():
        for line in listing.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb":
                candidates.append(next(p for p in parts[1:] if "://" in p))
    for uri in candidates:
        if re.search(r"/debian/?$", uri):
            return uri.rstrip("/")
    return DEFAULT_MIRROR


def build_image(
    definition_path: Path,
    name: str,
    cache: ImageCache,
    *,
    mirror: str | None = None,
    ca_bundle: Path | None = None,
    force: bool = False,
    log: Log = print,
) -> ImageInfo:
    """Build ``definition_path`` into ``cache`` as ``name``; atomic (all or nothing)."""
    definition = read_definition(definition_path)
    key = cache_key(name)
    existing = cache.get(key)
    if existing is not None and not force:
        log(f"image {key} is already in the cache (use --force to rebuild)")
        return existing
    cache.root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=cache.root))
    try:
        rootfs = staging / "rootfs"
        if shutil.which("apptainer"):
            _apptainer_build(definition_path, rootfs, log)
            source = "apptainer build --sandbox"
        else:
            _debootstrap_build(
                definition, rootfs, mirror or host_debian_mirror(), ca_bundle or HOST_CA_BUNDLE, log
            )
            source = "debootstrap"
        finish_rootfs(rootfs, definition)
        _write_metadata(
            staging,
            key,
            definition,
            source=f"{source} {definition_path.name}",
            definition_sha256=hashlib.sha256(definition_path.read_bytes()).hexdigest(),
        )
        _install(staging, cache.folder(key))
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    image = cache.get(key)
    if image is None:
        raise ImageError(f"image {key} was built but is not readable in {cache.root}")
    return image


def import_image(tarball: Path, name: str, cache: ImageCache) -> ImageInfo:
    """Unpack a root-filesystem tarball into the cache as ``name``."""
    if not tarball.is_file():
        raise ImageError(f"{tarball} is not a file")
    key = cache_key(name)
    cache.root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".import-{key}-", dir=cache.root))
    try:
        rootfs = staging / "rootfs"
        rootfs.mkdir()
        proc = subprocess.run(
            ["tar", "--numeric-owner", "-xpf", str(tarball), "-C", str(rootfs)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise ImageError(f"cannot unpack {tarball}: {proc.stderr.strip()}")
        if not (rootfs / "bin").exists() and not (rootfs / "usr" / "bin").exists():
            raise ImageError(f"{tarball} does not look like a root filesystem (no bin/)")
        definition = Definition(header={"bootstrap": "import"})
        finish_rootfs(rootfs, definition)
        _write_metadata(staging, key, definition, source=f"import {tarball.name}")
        _install(staging, cache.folder(key))
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    image = cache.get(key)
    assert image is not None
    return image


def _run_logged(command: list[str], log: Log, *, env: dict[str, str] | None = None) -> None:
    log("$ " + " ".join(command))
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    assert proc.stdout is not None
    tail: list[str] = []
    for line in proc.stdout:
        tail = ([*tail, line.rstrip()])[-30:]
        log("  " + line.rstrip())
    try:
        code = proc.wait(timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        proc.kill()
        raise ImageError(f"{command[0]} timed out after {BUILD_TIMEOUT_S}s") from exc
    if code != 0:
        raise ImageError(
            f"{' '.join(command[:3])}… failed with exit code {code}:\n" + "\n".join(tail)
        )


def _apptainer_build(definition_path: Path, rootfs: Path, log: Log) -> None:
    _run_logged(["apptainer", "build", "--sandbox", str(rootfs), str(definition_path)], log)


def _debootstrap_build(
    definition: Definition, rootfs: Path, mirror: str, ca_bundle: Path, log: Log
) -> None:
    if definition.bootstrap.lower() != "debootstrap":
        raise ImageError(
            f"without apptainer only 'Bootstrap: debootstrap' can be built here, not "
            f"{definition.bootstrap!r}; import a root-filesystem tarball instead"
        )
    for tool in ("debootstrap", "bwrap"):
        if shutil.which(tool) is None:
            raise ImageError(f"{tool} is needed to build images here (apt-get install {tool})")
    mirror = definition.header.get("mirrorurl", mirror)
    command = ["debootstrap", "--variant=minbase"]
    if definition.include:
        command.append("--include=" + ",".join(definition.include))
    command += [definition.os_version, str(rootfs), mirror]
    _run_logged(command, log)
    post = definition.sections.get("post", "").strip()
    if not post:
        return
    if not ca_bundle.is_file():
        raise ImageError(f"CA bundle {ca_bundle} not found (give one with --ca-bundle)")
    shutil.copyfile(ca_bundle, rootfs / BUILD_CA_PATH.lstrip("/"))
    resolv = Path("/etc/resolv.conf")
    if resolv.is_file():
        target = rootfs / "etc" / "resolv.conf"
        target.unlink(missing_ok=True)
        shutil.copyfile(resolv, target)
    clean_env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "DEBIAN_FRONTEND": "noninteractive",
        "PIP_CERT": BUILD_CA_PATH,
        "SSL_CERT_FILE": BUILD_CA_PATH,
        "REQUESTS_CA_BUNDLE": BUILD_CA_PATH,
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_CACHE_DIR": "1",
    }
    for key in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"):
        if key in os.environ:
            clean_env[key] = os.environ[key]
    command = [
        "bwrap",
        "--bind",
        str(rootfs),
        "/",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--tmpfs",
        "/tmp",
        "--cap-add",
        "ALL",
        "--die-with-parent",
        "--clearenv",
    ]
    for key, value in clean_env.items():
        command += ["--setenv", key, value]
    command += ["/bin/sh", "-e", "-c", post]
    _run_logged(command, log)
    (rootfs / BUILD_CA_PATH.lstrip("/")).unlink(missing_ok=True)


def finish_rootfs(rootfs: Path, definition: Definition) -> None:
    """Mount points for the runtimes, Apptainer's metadata files, no caches.

    The root filesystem may come from anywhere (a registry image, a tarball), and
    this runs on the host: no symlink in it is ever followed, so a link to a host
    folder cannot make it create, write or delete anything outside the image.
    """
    for mount_point in MOUNT_POINTS:
        _make_dirs(rootfs, mount_point)
    meta = ".singularity.d/env"
    if _make_dirs(rootfs, meta):
        environment = definition.sections.get("environment")
        if environment:
            _write_inside(rootfs / meta / "90-environment.sh", environment + "\n")
        runscript = definition.sections.get("runscript")
        if runscript:
            script = rootfs / ".singularity.d" / "runscript"
            _write_inside(script, "#!/bin/sh\n" + runscript + "\n")
            script.chmod(0o755)
    for cache_dir in ("var/cache/apt/archives", "var/lib/apt/lists"):
        folder = _inside(rootfs, cache_dir)
        if folder is None or not folder.is_dir():
            continue
        for entry in folder.iterdir():
            if entry.name != "lock" and stat.S_ISREG(entry.lstat().st_mode):
                entry.unlink()


def _inside(rootfs: Path, relative: str) -> Path | None:
    """``rootfs/relative`` when none of its components is a symlink, else ``None``."""
    path = rootfs
    for part in Path(relative).parts:
        path = path / part
        if path.is_symlink():
            return None
    return path


def _make_dirs(rootfs: Path, relative: str) -> bool:
    """Make ``rootfs/relative`` without following a symlink; False where one is in the
    way (the mount point is then left as the image has it)."""
    path = rootfs
    for part in Path(relative).parts:
        path = path / part
        if path.is_symlink():
            return False
        if not path.exists():
            path.mkdir()
        elif not path.is_dir():
            return False
    return True


def _write_inside(path: Path, text: str) -> None:
    """Write a file of the image, replacing a symlink there rather than writing through it."""
    if path.is_symlink():
        path.unlink()
    path.write_text(text)


def _write_metadata(
    staging: Path,
    key: str,
    definition: Definition,
    *,
    source: str,
    definition_sha256: str | None = None,
) -> None:
    """image.json: how the image was made, what it declares, and its Python."""
    document: dict[str, Any] = {
        "name": key,
        "source": source,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "header": definition.header,
        "labels": definition.labels,
        "environment": definition.environment,
        "runscript": definition.sections.get("runscript", ""),
        "python": inspect_python(staging / "rootfs", definition.environment).model_dump(),
    }
    if definition_sha256 is not None:
        document["definition_sha256"] = definition_sha256
    (staging / "image.json").write_text(json.dumps(document, indent=2) + "\n")


def _install(staging: Path, final: Path) -> None:
    """Swap the finished image into place (the old one, if any, is removed after)."""
    old = None
    if final.exists():
        old = final.with_name(f".old-{final.name}-{os.getpid()}")
        os.replace(final, old)
    os.replace(staging, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
