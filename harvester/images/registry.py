"""Images from OCI registries, with the field's tools: resolve a tag, pull by digest, unpack.

``skopeo inspect`` resolves what a reference points to now (its manifest digest).
The image is then pulled *by that digest*, so a tag moved in between cannot mix
two images: with Apptainer on the host, ``apptainer build --sandbox`` from the
pinned reference; elsewhere ``skopeo copy`` into an OCI layout and ``umoci unpack
--rootless`` into the cache, as ``unpacked.cern.ch`` serves images to sites. A
digest already in the cache is not pulled again.

What the registry says decides what happens next: it refuses the image in the
words of the distribution protocol (unknown name, tag or digest, a digest
mismatch, access denied: :class:`~harvester.errors.RegistryRefused`, the tasks
that need it fail with its message); anything else, the registry down, a
timeout, a local failure to unpack, is :class:`~harvester.errors.RegistryUnavailable`
(try again later), since trying again may help.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harvester.commands import CommandError, run_command
from harvester.errors import ImageError, RegistryRefused, RegistryUnavailable
from harvester.images.build import finish_rootfs
from harvester.images.cache import ImageCache, ImageInfo
from harvester.images.definition import Definition
from harvester.images.python import inspect_python
from harvester.images.reference import RegistryReference
from harvester.settings import HarvesterSettings

REFUSALS = re.compile(
    r"manifest unknown|name unknown|blob unknown|unauthorized|authentication required|"
    r"requested access to the resource is denied|"
    r"digest (?:did not match|mismatch|invalid)|invalid reference format|name invalid|"
    r"tag invalid|manifest invalid|no image found in manifest list|"
    r"choosing an image from manifest list",
    re.IGNORECASE,
)
"""What a registry (through skopeo) says when the image can never be had as asked."""

_MESSAGE = re.compile(r'msg="(?P<msg>(?:[^"\\]|\\.)*)"')


def registry_message(error: CommandError) -> str:
    """The registry's own words from a tool's error output, without the log decoration."""
    text = (error.stderr.strip() or error.stdout.strip() or str(error))[-2000:]
    match = _MESSAGE.search(text)
    if match:
        text = match.group("msg").replace('\\"', '"')
    return text.removeprefix("Error: ").strip()


@dataclass(frozen=True)
class Resolved:
    """What a reference points to now: its manifest digest, and what ``skopeo inspect``
    said of that image (``Env``, ``Labels``, ``Created``, ``Architecture``)."""

    digest: str
    inspected: dict[str, Any]


class RegistryClient:
    """Resolves and pulls registry images into one image cache."""

    @classmethod
    def for_site(cls, cache: ImageCache, settings: HarvesterSettings) -> RegistryClient:
        """The client the site's settings describe (TLS exceptions, pull timeout)."""
        return cls(
            cache,
            insecure_registries=settings.insecure_registries,
            timeout_s=settings.image_pull_timeout_s,
        )

    def __init__(
        self,
        cache: ImageCache,
        *,
        insecure_registries: Collection[str] = (),
        timeout_s: float = 1800.0,
        use_apptainer: bool | None = None,
    ) -> None:
        self.cache = cache
        self.insecure_registries = frozenset(insecure_registries)
        """Registries spoken to over plain HTTP / without TLS verification (loopback ones
        always are, as docker treats them)."""
        self.timeout_s = timeout_s
        self.use_apptainer = (
            shutil.which("apptainer") is not None if use_apptainer is None else use_apptainer
        )

    def tools_missing(self) -> list[str]:
        """The programs this host lacks for pulling (empty: it can pull)."""
        needed = ["skopeo"] + ([] if self.use_apptainer else ["umoci"])
        return [tool for tool in needed if shutil.which(tool) is None]

    def _insecure(self, reference: RegistryReference) -> bool:
        return reference.is_loopback or reference.registry in self.insecure_registries

    def _tls(self, reference: RegistryReference, flag: str) -> list[str]:
        return [f"{flag}=false"] if self._insecure(reference) else []

    def _run(self, command: Sequence[str], reference: RegistryReference, timeout_s: float) -> str:
        missing = self.tools_missing()
        if missing:
            raise RegistryUnavailable(
                f"cannot pull {reference}: {', '.join(missing)} not installed on the harvester "
                f"host (Debian: apt-get install {' '.join(missing)})"
            )
        try:
            return run_command(command, timeout_s=timeout_s).stdout
        except CommandError as exc:
            message = registry_message(exc)
            if exc.exit_code is not None and REFUSALS.search(message):
                raise RegistryRefused(f"{reference}: {message}") from exc
            raise RegistryUnavailable(f"registry {reference.registry}: {message}") from exc

    def resolve(self, reference: RegistryReference) -> Resolved:
        """The manifest digest the reference points to now (its tag's, or its own digest),
        with the image's configuration from the same answer."""
        output = self._run(
            ["skopeo", "inspect", *self._tls(reference, "--tls-verify"), reference.by_tag()],
            reference,
            timeout_s=120,
        )
        try:
            inspected = json.loads(output)
            digest = str(inspected["Digest"])
        except (ValueError, KeyError, TypeError) as exc:
            raise RegistryUnavailable(f"{reference}: skopeo inspect gave no digest") from exc
        if reference.digest is not None and digest != reference.digest:
            raise RegistryRefused(
                f"{reference}: digest mismatch: the registry's {reference.name}:{reference.tag} "
                f"is {digest}, not the {reference.digest} asked for"
            )
        return Resolved(digest, inspected)

    def pull(self, reference: RegistryReference, resolved: Resolved) -> tuple[ImageInfo, bool]:
        """The image of ``resolved.digest``, pulled into the cache unless it is there already.

        Returns the image and whether it was pulled now. Atomic: a pull that fails or
        is interrupted leaves nothing a job could use.
        """
        digest = resolved.digest
        existing = self.cache.get_pulled(digest)
        if existing is not None:
            return existing, False
        final = self.cache.pulled_folder(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".pull-{digest[7:19]}-", dir=final.parent))
        try:
            pinned = reference.by_digest(digest)
            if self.use_apptainer:
                plain_http = ["--nohttps"] if self._insecure(reference) else []
                self._run(
                    [
                        "apptainer",
                        "build",
                        *plain_http,
                        "--sandbox",
                        str(staging / "rootfs"),
                        pinned,
                    ],
                    reference,
                    timeout_s=self.timeout_s,
                )
            else:
                self._skopeo_umoci(reference, pinned, staging)
            finish_rootfs(staging / "rootfs", Definition(header={"bootstrap": "docker"}))
            metadata = _metadata(reference, resolved)
            metadata["python"] = inspect_python(
                staging / "rootfs", metadata["environment"]
            ).model_dump()
            (staging / "image.json").write_text(json.dumps(metadata, indent=2) + "\n")
            try:
                os.replace(staging, final)
            except OSError:
                if self.cache.get_pulled(digest) is None:  # not another puller's, first
                    raise
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        image = self.cache.get_pulled(digest)
        if image is None:
            raise ImageError(f"{reference} was pulled but is not readable in {final}")
        return image, True

    def _skopeo_umoci(self, reference: RegistryReference, pinned: str, staging: Path) -> None:
        layout = staging / "oci"
        self._run(
            [
                "skopeo",
                "copy",
                "--quiet",
                *self._tls(reference, "--src-tls-verify"),
                pinned,
                f"oci:{layout}:image",
            ],
            reference,
            timeout_s=self.timeout_s,
        )
        bundle = staging / "bundle"
        try:
            run_command(
                ["umoci", "unpack", "--rootless", "--image", f"{layout}:image", str(bundle)],
                timeout_s=self.timeout_s,
            )
        except CommandError as exc:  # a local failure (disk, timeout): may pass
            raise RegistryUnavailable(
                f"cannot unpack {reference}: {registry_message(exc)}"
            ) from exc
        os.replace(bundle / "rootfs", staging / "rootfs")
        shutil.rmtree(bundle, ignore_errors=True)
        shutil.rmtree(layout, ignore_errors=True)


def _metadata(reference: RegistryReference, resolved: Resolved) -> dict[str, Any]:
    """image.json of a pulled image: where it came from, and its environment and labels."""
    inspected = resolved.inspected
    environment = {}
    for item in inspected.get("Env") or []:
        key, sep, value = str(item).partition("=")
        if sep and key:
            environment[key] = value
    return {
        "name": f"{reference.name}@{resolved.digest}",
        "source": f"pulled {reference}",
        "reference": str(reference),
        "digest": resolved.digest,
        "created": str(inspected.get("Created") or ""),
        "pulled": datetime.now(UTC).isoformat(timespec="seconds"),
        "labels": dict(inspected.get("Labels") or {}),
        "environment": environment,
        "architecture": inspected.get("Architecture"),
    }


def export_oci(image: ImageInfo, layout: Path, tag: str) -> None:
    """Write a cache image as an OCI image (one layer) into the layout folder ``layout``.

    Its environment and labels go into the image configuration, so a pull gives
    them back. What a site runs to publish the images it built to its registry.
    """
    steps = [
        ["umoci", "init", "--layout", str(layout)],
        ["umoci", "new", "--image", f"{layout}:{tag}"],
    ]
    for tool in ("umoci", "skopeo"):
        if shutil.which(tool) is None:
            raise ImageError(f"{tool} is needed to push images (apt-get install {tool})")
    with tempfile.TemporaryDirectory(prefix=".export-", dir=layout.parent) as scratch:
        bundle = Path(scratch) / "bundle"
        try:
            for command in [
                *steps,
                ["umoci", "unpack", "--rootless", "--image", f"{layout}:{tag}", str(bundle)],
            ]:
                run_command(command, timeout_s=600)
            run_command(
                ["cp", "-a", "--", f"{image.rootfs}/.", str(bundle / "rootfs")], timeout_s=1800
            )
            run_command(
                ["umoci", "repack", "--image", f"{layout}:{tag}", str(bundle)], timeout_s=1800
            )
            config = ["umoci", "config", "--image", f"{layout}:{tag}"]
            for key, value in image.environment.items():
                config += ["--config.env", f"{key}={value}"]
            for key, value in dict(image.metadata.get("labels") or {}).items():
                config += ["--config.label", f"{key}={value}"]
            run_command(config, timeout_s=600)
        except CommandError as exc:
            raise ImageError(f"cannot export {image.name}: {registry_message(exc)}") from exc


def push_layout(
    layout: Path, tag: str, destination: RegistryReference, *, insecure: bool = False
) -> None:
    """Copy the layout's image ``tag`` to the registry with skopeo."""
    tls = ["--dest-tls-verify=false"] if insecure or destination.is_loopback else []
    try:
        run_command(
            ["skopeo", "copy", "--quiet", *tls, f"oci:{layout}:{tag}", destination.by_tag()],
            timeout_s=1800,
        )
    except CommandError as exc:
        raise ImageError(f"cannot push to {destination}: {registry_message(exc)}") from exc
