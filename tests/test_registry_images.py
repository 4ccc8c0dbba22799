"""docker:// images from a real OCI registry on loopback: pulled by digest, once per site.

The registry is Debian's ``docker-registry`` (``scripts/oci-registry``); the image
pushed into it is the base image built from ``containers/base.def``, packed with
umoci and copied in with skopeo, as a site publishes what it builds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harvester.errors import ImageError
from harvester.images.cache import ImageCache
from harvester.images.reference import RegistryReference
from harvester.images.registry import export_oci, push_layout
from tests.helpers import REPO, Harvester, free_port, wait_for


def test_references_are_parsed_as_docker_reads_them() -> None:
    local = RegistryReference.parse("docker://127.0.0.1:5000/hpcaf/base:v1")
    assert (local.registry, local.repository, local.tag, local.digest) == (
        "127.0.0.1:5000",
        "hpcaf/base",
        "v1",
        None,
    )
    assert local.is_loopback
    hub = RegistryReference.parse("docker://python")
    assert str(hub) == "docker://docker.io/library/python:latest"
    assert not hub.is_loopback
    digest = "sha256:" + "a" * 64
    pinned = RegistryReference.parse(f"docker://ghcr.io/org/img:1.0@{digest}")
    assert (pinned.tag, pinned.digest) == ("1.0", digest)
    assert pinned.by_digest(digest) == f"docker://ghcr.io/org/img@{digest}"
    assert RegistryReference.parse("docker://localhost/x").registry == "localhost"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("docker://Hpcaf/Base:v1", "lower-case"),
        ("docker://hpcaf/base:v1@sha256:abc", "64 lower-case hex"),
        ("docker://hpcaf/base:bad tag", "bad tag"),
        ("docker://", "lower-case"),
        ("docker://hpcaf//base", "lower-case"),
    ],
)
def test_malformed_references_say_what_is_wrong(text: str, why: str) -> None:
    with pytest.raises(ImageError, match=why):
        RegistryReference.parse(text)


@dataclass
class Registry:
    """A running loopback registry and the OCI layout of the images pushed into it."""

    address: str
    env: dict[str, str]
    layout: Path

    def script(self, action: str) -> None:
        proc = subprocess.run(
            [str(REPO / "scripts" / "oci-registry"), action],
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr

    def push(self, layout_tag: str, repository: str) -> str:
        """Push a tag of the layout; return the manifest digest the registry now serves."""
        destination = RegistryReference.parse(f"docker://{self.address}/{repository}")
        push_layout(self.layout, layout_tag, destination)
        return self.digest(repository)

    def digest(self, repository: str) -> str:
        proc = subprocess.run(
            ["skopeo", "inspect", "--tls-verify=false", f"docker://{self.address}/{repository}"],
            capture_output=True,
            text=True,
            check=True,
        )
        return str(json.loads(proc.stdout)["Digest"])


@pytest.fixture(scope="module")
def registry(image_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """The registry up, with the base image as two variants (``one``, ``two``) in a layout
    that differ only in an environment variable: a moved tag that a job can tell apart."""
    missing = [t for t in ("docker-registry", "skopeo", "umoci") if shutil.which(t) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: make test installs them")
    root = tmp_path_factory.mktemp("registry")
    port = free_port()
    env = {
        **os.environ,
        "HPCAF_REGISTRY_DIR": str(root / "server"),
        "HPCAF_REGISTRY_PORT": str(port),
    }
    registry = Registry(address=f"127.0.0.1:{port}", env=env, layout=root / "oci")
    registry.script("up")
    try:
        export_oci(ImageCache(image_cache).require("base"), registry.layout, "image")
        for variant in ("one", "two"):
            subprocess.run(
                ["umoci", "config", "--image", f"{registry.layout}:image", "--tag", variant,
                 "--config.env", f"HPCAF_IMAGE_MARK={variant}"],
                check=True, capture_output=True,
            )  # fmt: skip
        yield registry
    finally:
        registry.script("down")


def _pulled(cache: Path) -> list[Path]:
    return sorted((cache / "_registry").glob("sha256-*"))


@pytest.mark.e2e
def test_a_registry_image_waits_for_its_registry_runs_pinned_and_is_pulled_once(
    harvester_factory: Callable[..., Harvester], registry: Registry, tmp_path: Path
) -> None:
    first = registry.push("one", "hpcaf/base:v1")
    cache = tmp_path / "site-images"
    harvester = harvester_factory(HPCAF_IMAGE_CACHE=str(cache))
    image = f"docker://{registry.address}/hpcaf/base:v1"

    def submit(name: str) -> int:
        return harvester.submit(
            "--containerImage", image, "--exec", 'echo "$HPCAF_IMAGE_MARK" > mark.txt',
            "--outputs", "mark.txt", "--outDS", f"user.alice.{name}",
        )  # fmt: skip

    def mark(task_id: int) -> str:
        out = harvester.user_dir / f"results-{task_id}"
        fetched = harvester.pbook("results", str(task_id), "-o", str(out))
        assert fetched.returncode == 0, fetched.output
        return next(out.iterdir()).read_text().strip()

    # the registry is down when the job needs the image: the job waits and says why
    registry.script("stop")
    waiting_id = submit("waiting")
    job = wait_for(
        lambda: next(
            (j for j in harvester.jobs(waiting_id) if "connection refused" in
             (j.get("brokerage_message") or "")), None,
        ),
        30, "the job to show that the registry is down",
    )  # fmt: skip
    assert job["status"] == "defined" and "waiting for image" in job["brokerage_message"]
    shown = harvester.pbook("show", str(waiting_id))
    assert "waiting for image" in shown.stdout and "Traceback" not in shown.output
    assert harvester.task(waiting_id)["image_digest"] is None
    registry.script("start")
    assert harvester.wait_task(waiting_id)["status"] == "done"
    task = harvester.task(waiting_id)
    assert task["image_digest"] == first, "pinned to the digest the registry served"
    assert task["image_message"] is None
    assert mark(waiting_id) == "one", "the image's own environment reached the job"
    assert first in harvester.pbook("show", str(waiting_id)).stdout
    [folder] = _pulled(cache)
    listed = json.loads(harvester.cli("harvester.cli", "image", "list", "--json").stdout)
    assert f"{registry.address}/hpcaf/base@{first}" in {i["name"] for i in listed}
    pulled_at = json.loads((folder / "image.json").read_text())["pulled"]
    inode = folder.stat().st_ino

    # the same tag, unchanged: not pulled again
    again_id = submit("again")
    assert harvester.wait_task(again_id)["status"] == "done"
    assert harvester.task(again_id)["image_digest"] == first
    assert _pulled(cache) == [folder] and folder.stat().st_ino == inode
    assert json.loads((folder / "image.json").read_text())["pulled"] == pulled_at

    # the tag moves: pulled again, and the new task runs the new image
    second = registry.push("two", "hpcaf/base:v1")
    assert second != first
    moved_id = submit("moved")
    assert harvester.wait_task(moved_id)["status"] == "done"
    assert harvester.task(moved_id)["image_digest"] == second
    assert mark(moved_id) == "two"
    assert len(_pulled(cache)) == 2
    assert harvester.task(waiting_id)["image_digest"] == first, "a pin never changes"


@pytest.mark.e2e
def test_an_image_the_registry_refuses_fails_the_task_with_its_message(
    harvester_factory: Callable[..., Harvester], registry: Registry, tmp_path: Path
) -> None:
    registry.push("one", "hpcaf/base:v1")
    harvester = harvester_factory(
        HPCAF_IMAGE_CACHE=str(tmp_path / "site-images"),
        HPCAF_ALLOWED_REGISTRIES=json.dumps([registry.address]),
    )
    wrong = "sha256:" + "0" * 64
    cases = {
        "missing": (f"docker://{registry.address}/hpcaf/base:nope", "manifest unknown"),
        "mismatch": (f"docker://{registry.address}/hpcaf/base:v1@{wrong}", "digest mismatch"),
        "unknown": (f"docker://{registry.address}/hpcaf/nothing:v1", "unknown"),
    }
    submitted = {
        name: harvester.submit(
            "--containerImage", image, "--exec", "true", "--outDS", f"user.alice.{name}"
        )
        for name, (image, _) in cases.items()
    }
    for name, task_id in submitted.items():
        task = harvester.wait_task(task_id)
        assert task["status"] == "failed", (name, task)
        assert cases[name][1] in task["error_dialog"], (name, task["error_dialog"])
        [job] = harvester.jobs(task_id)
        assert job["pilot_error_code"] == 1307 and job["attempt_nr"] == 1, job
        assert cases[name][1] in job["pilot_error_diag"]
    assert not (tmp_path / "site-images" / "_registry").exists() or not _pulled(
        tmp_path / "site-images"
    ), "nothing refused was unpacked"
    pull = harvester.cli("harvester.cli", "image", "pull", cases["missing"][0])
    assert pull.returncode != 0 and "manifest unknown" in pull.output
    assert "Traceback" not in pull.output
    elsewhere = harvester.pcontainer(
        "--containerImage", "docker://ghcr.io/org/tool:1", "--exec", "true",
        "--outDS", "user.alice.elsewhere",
    )  # fmt: skip
    assert elsewhere.returncode != 0 and "pulls images only from" in elsewhere.output
    bad = harvester.pcontainer(
        "--containerImage", "docker://Hpcaf/Base", "--exec", "true", "--outDS", "user.alice.bad"
    )
    assert bad.returncode != 0 and "lower-case" in bad.output and "Traceback" not in bad.output
