"""Registry image references (``docker://host[:port]/path[:tag][@sha256:…]``), parsed once.

The grammar is the OCI distribution one that docker, skopeo and apptainer accept:
a registry host only when the first path component looks like one (has a ``.`` or
a ``:``, or is ``localhost``), Docker Hub's ``docker.io`` and ``library/``
otherwise; a tag (default ``latest``) and an optional digest. A reference with a
digest is pinned by it; with a tag and a digest both, the tag must still point
to that digest when the image is resolved (a mismatch fails the task).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from harvester.errors import ImageError

REGISTRY_SCHEME = "docker://"
DEFAULT_REGISTRY = "docker.io"

_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.?)+(?::[0-9]{1,5})?$")
_IPV6_HOST = re.compile(r"^\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?$")


def is_registry_reference(text: str) -> bool:
    """Whether an image name asks for a registry image rather than one of the cache."""
    return text.strip().startswith(REGISTRY_SCHEME)


@dataclass(frozen=True)
class RegistryReference:
    """One image in an OCI registry."""

    registry: str
    """Host and optional port (``127.0.0.1:5000``, ``ghcr.io``)."""
    repository: str
    """The path inside the registry (``library/python``)."""
    tag: str | None
    """``None`` only when the reference is by digest alone."""
    digest: str | None
    """``sha256:…`` when the user pinned the image."""

    @classmethod
    def parse(cls, text: str) -> RegistryReference:
        """Parse ``docker://…``; raise :class:`ImageError` saying what is wrong."""
        raw = text.strip()
        if not raw.startswith(REGISTRY_SCHEME):
            raise ImageError(f"invalid image reference {text!r}: expected docker://…")
        rest = raw[len(REGISTRY_SCHEME) :]
        digest = None
        if "@" in rest:
            rest, digest = rest.split("@", 1)
            if not _DIGEST.match(digest):
                raise ImageError(
                    f"invalid image reference {text!r}: the digest must be sha256: and "
                    "64 lower-case hex digits"
                )
        first, _, remainder = rest.partition("/")
        if remainder and ("." in first or ":" in first or first == "localhost"):
            registry, path = first, remainder
            if not (_HOST.match(registry) or _IPV6_HOST.match(registry)):
                raise ImageError(f"invalid image reference {text!r}: bad registry {registry!r}")
        else:
            registry, path = DEFAULT_REGISTRY, rest
        tag = None
        last = path.rsplit("/", 1)[-1]
        if ":" in last:
            path, tag = path.rsplit(":", 1)
            if not _TAG.match(tag):
                raise ImageError(f"invalid image reference {text!r}: bad tag {tag!r}")
        if registry == DEFAULT_REGISTRY and "/" not in path:
            path = f"library/{path}"
        if not path or not all(_COMPONENT.match(c) for c in path.split("/")):
            raise ImageError(
                f"invalid image reference {text!r}: the repository path takes lower-case "
                "letters, digits and single separators ('.', '_', '-') between '/'"
            )
        if tag is None and digest is None:
            tag = "latest"
        reference = cls(registry=registry, repository=path, tag=tag, digest=digest)
        if len(str(reference)) > 255:  # as stored: with docker.io/library/ and :latest
            raise ImageError(f"invalid image reference {text!r}: longer than 255 characters")
        return reference

    @property
    def name(self) -> str:
        """``registry/repository`` without tag or digest."""
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        text = REGISTRY_SCHEME + self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    def by_tag(self) -> str:
        """What to ask the registry to resolve: the tag when there is one, else the digest."""
        suffix = f":{self.tag}" if self.tag is not None else f"@{self.digest}"
        return REGISTRY_SCHEME + self.name + suffix

    def by_digest(self, digest: str) -> str:
        """The reference pinned to ``digest``: what is pulled, so a moved tag cannot race."""
        return f"{REGISTRY_SCHEME}{self.name}@{digest}"

    @property
    def host(self) -> str:
        """The registry's host without the port."""
        if self.registry.startswith("["):
            return self.registry[1:].split("]", 1)[0]
        return self.registry.rsplit(":", 1)[0] if ":" in self.registry else self.registry

    @property
    def is_loopback(self) -> bool:
        """A registry on this host: spoken to over plain HTTP, as docker does by default."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False
