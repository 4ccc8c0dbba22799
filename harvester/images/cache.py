"""The image cache: unpacked root filesystems, one folder per image.

Layout, as a site would serve from a cvmfs-style unpacked repository::

    <cache>/<name>/rootfs/      the image's root filesystem (read-only at run time)
    <cache>/<name>/image.json   labels, environment, runscript, how it was made

Images pulled from a registry are kept by their manifest digest, so a task pinned
to a digest runs exactly that image whatever its tag points to later, and an image
is pulled once per site whichever tag or task asked for it::

    <cache>/_registry/sha256-<hex>/rootfs/
    <cache>/_registry/sha256-<hex>/image.json   the reference it was pulled as, the digest
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harvester.errors import ImageError
from harvester.images.python import inspect_python
from protocol.pythons import ImagePython

IMAGE_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$")
REGISTRY_FOLDER = "_registry"
"""Pulled images; no image name can start with ``_``, so it never clashes with one."""
DIGEST_PATTERN = re.compile(r"^sha256:[0-9a-f]{64}$")


def cache_key(reference: str) -> str:
    """The cache folder name of an image reference (``docker://a/b:t`` → ``a_b_t``)."""
    ref = reference.strip()
    for prefix in ("docker://", "oras://", "library://"):
        if ref.startswith(prefix):
            ref = ref[len(prefix) :]
    key = re.sub(r"[/:@]", "_", ref)
    if not IMAGE_NAME_PATTERN.match(key):
        raise ImageError(f"invalid image name {reference!r}: use letters, digits, '.', '_' or '-'")
    return key


@dataclass(frozen=True)
class ImageInfo:
    """One image of the cache."""

    name: str
    rootfs: Path
    metadata: dict[str, Any]

    @property
    def environment(self) -> dict[str, str]:
        return dict(self.metadata.get("environment", {}))

    @property
    def python(self) -> ImagePython:
        """The image's Python, as recorded when it entered the cache (read off the root
        filesystem now for an image cached before that was recorded)."""
        recorded = self.metadata.get("python")
        if isinstance(recorded, dict):
            return ImagePython.model_validate(recorded)
        return inspect_python(self.rootfs, self.environment)


class ImageCache:
    """Looks images up by name in one cache folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, reference: str) -> Path:
        return self.root / cache_key(reference)

    def get(self, reference: str) -> ImageInfo | None:
        """The image, or ``None`` when it is not in the cache."""
        try:
            folder = self.folder(reference)
        except ImageError:
            return None
        return _read(folder, folder.name)

    def require(self, reference: str) -> ImageInfo:
        image = self.get(reference)
        if image is None:
            known = ", ".join(i.name for i in self.list()) or "none"
            raise ImageError(
                f"image {reference!r} is not in the image cache {self.root} (available: {known}); "
                "build it with 'harvester image build' or import it with 'harvester image import'"
            )
        return image

    def pulled_folder(self, digest: str) -> Path:
        """Where the image of manifest ``digest`` is (or will be) unpacked."""
        if not DIGEST_PATTERN.match(digest):
            raise ImageError(f"invalid image digest {digest!r}")
        return self.root / REGISTRY_FOLDER / digest.replace(":", "-")

    def get_pulled(self, digest: str) -> ImageInfo | None:
        """The pulled image of manifest ``digest``, or ``None`` when it was not pulled here."""
        try:
            folder = self.pulled_folder(digest)
        except ImageError:
            return None
        return _read(folder, digest)

    def list_pulled(self) -> list[ImageInfo]:
        """Every image pulled from a registry into this cache."""
        folder = self.root / REGISTRY_FOLDER
        found = (
            self.get_pulled(f.name.replace("-", ":", 1)) for f in sorted(folder.glob("sha256-*"))
        )
        return [image for image in found if image is not None]

    def list(self) -> list[ImageInfo]:
        if not self.root.is_dir():
            return []
        images = []
        for folder in sorted(self.root.iterdir()):
            image = self.get(folder.name)
            if image is not None:
                images.append(image)
        return images


def _read(folder: Path, name: str) -> ImageInfo | None:
    """The image in ``folder`` (its root filesystem and image.json), or ``None``."""
    meta_file = folder / "image.json"
    if not (folder / "rootfs").is_dir() or not meta_file.is_file():
        return None
    return ImageInfo(
        name=name, rootfs=folder / "rootfs", metadata=json.loads(meta_file.read_text())
    )
