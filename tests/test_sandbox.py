"""The user's files travel with the job: the work directory packed as prun ships it,
unpacked safely by the pilot, and a script from it run by a real job."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

from harvester.client.sandbox import SandboxError, pack_work_dir
from pilot.stage import StageError, extract_sandbox
from tests.helpers import Harvester


def _project(root: Path) -> Path:
    (root / "data").mkdir(parents=True)
    (root / "train.py").write_text(
        "import json, pathlib\n"
        "config = json.loads(pathlib.Path('data/config.json').read_text())\n"
        "pathlib.Path('data/config.json').write_text('rewritten')  # read-write\n"
        "again = pathlib.Path('data/config.json').read_text()\n"
        "names = sorted(str(p) for p in pathlib.Path('.').rglob('*') if p.is_file())\n"
        "pathlib.Path('out.txt').write_text(f\"{config['greeting']} {again} {names}\")\n"
    )
    (root / "data" / "config.json").write_text('{"greeting": "hello from the sandbox"}')
    (root / "run.sh").write_text("#!/bin/sh\necho ran\n")
    (root / "run.sh").chmod(0o755)
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "train.cpython-311.pyc").write_bytes(b"\0" * 10)
    (root / "events.root").write_bytes(b"root" * 10)
    (root / "notes.tmp").write_text("scratch")
    return root


def test_what_is_shipped_and_what_stays_home(tmp_path: Path) -> None:
    root = _project(tmp_path / "p")
    (root / "big.bin").write_bytes(os.urandom(2048))
    sandbox = pack_work_dir(root, exclude_files=["*.tmp"], max_file_bytes=1024)
    assert sorted(sandbox.files) == ["data/config.json", "run.sh", "train.py"]
    assert any("events.root (a ROOT file" in s for s in sandbox.left_out)
    assert any(s.startswith("big.bin (") for s in sandbox.left_out)
    named = pack_work_dir(root, ext_files=["*.root", "big.bin"], max_file_bytes=1024)
    assert {"events.root", "big.bin", "notes.tmp"} <= set(named.files)
    assert not any(f.startswith((".git/", "__pycache__/")) for f in named.files)


def test_the_same_folder_gives_the_same_archive(tmp_path: Path) -> None:
    """Content-addressed: times and owners are not in the archive, so the store keeps one."""
    root = _project(tmp_path / "p")
    first = hashlib.sha256(pack_work_dir(root).data).hexdigest()
    os.utime(root / "train.py", (1, 1))
    assert hashlib.sha256(pack_work_dir(root).data).hexdigest() == first
    (root / "train.py").write_text("print('changed')\n")
    assert hashlib.sha256(pack_work_dir(root).data).hexdigest() != first


def test_a_sandbox_over_the_cap_is_refused_with_the_largest_files(tmp_path: Path) -> None:
    root = tmp_path / "p"
    root.mkdir()
    (root / "noise.bin").write_bytes(os.urandom(64 * 1024))
    (root / "small.txt").write_text("x")
    with pytest.raises(SandboxError, match=r"over the limit.*noise\.bin.*--excludeFile"):
        pack_work_dir(root, max_sandbox_bytes=16 * 1024)


def _archive(path: Path, *members: tarfile.TarInfo) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for member in members:
            data = b"owned" if member.isfile() else None
            if data is not None:
                member.size = len(data)
            tar.addfile(member, io.BytesIO(data) if data is not None else None)
    return path


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type, member.linkname = kind, target
    return member


def _device(name: str) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type, member.devmajor, member.devminor = tarfile.CHRTYPE, 1, 3
    return member


@pytest.mark.parametrize(
    "members",
    [
        [_link("escape", "/tmp"), tarfile.TarInfo("escape/owned.txt")],
        [tarfile.TarInfo("../owned.txt")],
        [tarfile.TarInfo("/tmp/owned.txt")],
        [tarfile.TarInfo("ok.txt"), _link("hard", "/etc/passwd", tarfile.LNKTYPE)],
        [tarfile.TarInfo("ok.txt"), _device("null")],
    ],
    ids=["symlink-then-file", "dot-dot", "absolute", "hard-link", "device"],
)
def test_the_pilot_unpacks_nothing_outside_the_work_dir(
    tmp_path: Path, members: list[tarfile.TarInfo]
) -> None:
    workdir = tmp_path / "job"
    workdir.mkdir()
    archive = _archive(tmp_path / "bad.tar.gz", *members)
    with pytest.raises(StageError, match="sandbox"):
        extract_sandbox(archive, workdir)
    assert list(workdir.iterdir()) == [], "nothing is written before every member is checked"
    assert not (tmp_path / "owned.txt").exists()


@pytest.mark.e2e
def test_a_script_in_the_work_dir_runs_in_the_job(harvester: Harvester) -> None:
    _project(harvester.user_dir / "analysis")
    task_id = harvester.submit(
        "--workDir", "analysis", "--containerImage", "base", "--exec",
        "python3 train.py && ./run.sh", "--outputs", "out.txt", "--outDS", "user.alice.sandbox",
    )  # fmt: skip
    assert harvester.wait_task(task_id)["status"] == "done"
    out = harvester.user_dir / "results"
    fetched = harvester.pbook("results", str(task_id), "-o", str(out))
    assert fetched.returncode == 0, fetched.output
    text = next(out.iterdir()).read_text()
    assert text.startswith("hello from the sandbox rewritten"), "read, then written in place"
    for shipped in ("train.py", "data/config.json", "run.sh"):
        assert shipped in text, text
    for stayed in (".git", "__pycache__", "events.root"):
        assert stayed not in text, text
    log = harvester.pbook("logs", str(harvester.jobs(task_id)[0]["id"]))
    assert "ran" in log.stdout, "the executable bit travelled"
