"""Definition files and the image cache (the build itself is exercised by every e2e test)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from harvester.errors import ImageError
from harvester.images.build import import_image
from harvester.images.cache import ImageCache, cache_key
from harvester.images.definition import parse_definition, read_definition

REPO = Path(__file__).resolve().parent.parent


def test_base_definition() -> None:
    d = read_definition(REPO / "containers" / "base.def")
    assert d.bootstrap == "debootstrap" and d.os_version == "bookworm"
    assert d.include == ["python3"]
    assert d.environment == {"LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1"}
    assert d.labels["org.hpcaf.image"] == "base"
    assert "python3 --version" in d.sections["post"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("OSVersion: bookworm\n", "no 'Bootstrap:'"),
        ("Bootstrap: debootstrap\n%bogus\n", "unknown section %bogus"),
        ("Bootstrap debootstrap\n", "expected 'Key: value'"),
    ],
)
def test_bad_definitions(text: str, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        parse_definition(text)


def test_cache_keys() -> None:
    assert cache_key("base") == "base"
    assert cache_key("docker://ghcr.io/x/y:1.0") == "ghcr.io_x_y_1.0"
    with pytest.raises(ImageError):
        cache_key("../../etc")


def test_import_tarball(tmp_path: Path) -> None:
    tar_path = tmp_path / "root.tar"
    with tarfile.open(tar_path, "w") as tar:
        for name, data in (("bin/sh", b"#!fake"), ("etc/os-release", b"ID=test\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    cache = ImageCache(tmp_path / "cache")
    image = import_image(tar_path, "docker://example/tool:1", cache)
    assert image.name == "example_tool_1"
    assert (image.rootfs / "srv" / "workDir").is_dir(), "mount points are made at import"
    assert json.loads((image.rootfs.parent / "image.json").read_text())["source"].startswith(
        "import"
    )
    assert [i.name for i in cache.list()] == ["example_tool_1"]
    with pytest.raises(ImageError, match="not in the image cache"):
        cache.require("other")


def test_import_refuses_non_rootfs(tmp_path: Path) -> None:
    tar_path = tmp_path / "x.tar"
    with tarfile.open(tar_path, "w") as tar:
        info = tarfile.TarInfo("README")
        tar.addfile(info, io.BytesIO(b""))
    cache = ImageCache(tmp_path / "cache")
    with pytest.raises(ImageError, match="does not look like a root filesystem"):
        import_image(tar_path, "x", cache)
    assert cache.list() == [] and list((tmp_path / "cache").iterdir()) == []


def test_finishing_a_foreign_root_follows_no_symlink(tmp_path: Path) -> None:
    """A registry image is finished on the host: its symlinks to host folders must not
    make hpcaf create, write or delete anything there."""
    from harvester.images.build import finish_rootfs
    from harvester.images.definition import Definition

    host = tmp_path / "host"
    (host / "lists").mkdir(parents=True)
    (host / "lists" / "precious").write_text("keep me")
    rootfs = tmp_path / "rootfs"
    (rootfs / "var" / "lib" / "apt").mkdir(parents=True)
    (rootfs / "var" / "lib" / "apt" / "lists").symlink_to(host / "lists")
    (rootfs / "srv").symlink_to(host)
    (rootfs / ".singularity.d").mkdir()
    (rootfs / ".singularity.d" / "env").symlink_to(host)
    definition = Definition(
        header={"bootstrap": "docker"},
        sections={"environment": "export A=1", "runscript": "exec sh"},
    )
    finish_rootfs(rootfs, definition)
    assert (host / "lists" / "precious").read_text() == "keep me"
    assert sorted(p.name for p in host.iterdir()) == ["lists"], "nothing made on the host"
    assert (rootfs / "tmp").is_dir() and (rootfs / "usr" / "local" / "nvidia").is_dir()
