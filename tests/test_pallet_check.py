"""pfit's pallet check, remembered per content: the remembered answer against pyhf's own
validation (the slow truth) on real pallets, and on inputs chosen to break it: bytes
changed after a check, a patchset of another workspace, a bad pallet checked twice."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest
import typer

from harvester.client import pallet_check
from harvester.client.pallet_check import PalletFile, check_pallet, validate
from tests.helpers import REPO


@pytest.fixture(scope="module")
def pallets() -> Path:
    root = Path(os.environ.get("HPCAF_PALLETS") or REPO.parent / "shared" / "data" / "pallets")
    if not (root / "staus").is_dir():
        pytest.fail(f"pallets not found under {root}: set HPCAF_PALLETS")
    return root


def files(folder: Path) -> tuple[PalletFile, PalletFile]:
    return (
        PalletFile.read(folder / "BkgOnly.json", "--workspace"),
        PalletFile.read(folder / "patchset.json.gz", "--patchset"),
    )


@pytest.mark.parametrize("pallet", ["staus/Region-combined", "sbottom/RegionA"])
def test_a_remembered_check_equals_pyhfs_own(pallets: Path, tmp_path: Path, pallet: str) -> None:
    workspace, patchset = files(pallets / pallet)
    truth = validate(workspace.document("w"), patchset.document("p"))
    first = check_pallet(workspace, patchset, tmp_path)
    assert list((tmp_path / "checked").glob("*.json")), "a passed check is remembered"
    second = check_pallet(workspace, patchset, tmp_path)
    assert first == second == truth
    document = json.loads(gzip.decompress(patchset.raw))
    assert list(second.patches) == [p["metadata"]["name"] for p in document["patches"]]


def test_a_remembered_check_is_used_only_for_the_same_bytes(
    pallets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace, patchset = files(pallets / "staus" / "Region-combined")
    check_pallet(workspace, patchset, tmp_path)
    calls = []
    real = pallet_check.validate

    def counted(*documents: object) -> pallet_check.CheckedPallet:
        calls.append(1)
        return real(*documents)

    monkeypatch.setattr(pallet_check, "validate", counted)
    check_pallet(workspace, patchset, tmp_path)
    assert calls == [], "the same bytes are not validated again"
    # the patchset's bytes changed after the check (one patch renamed): validated anew,
    # and the answer is the new file's
    document = json.loads(gzip.decompress(patchset.raw))
    document["patches"][0]["metadata"]["name"] = "renamed_patch"
    changed_path = tmp_path / "patchset.json.gz"
    changed_path.write_bytes(gzip.compress(json.dumps(document).encode()))
    changed = PalletFile.read(changed_path, "--patchset")
    result = check_pallet(workspace, changed, tmp_path)
    assert calls == [1], "other bytes are validated anew"
    assert "renamed_patch" in result.patches
    # the sbottom patchset with the staus workspace: refused, whatever was remembered
    _, other = files(pallets / "sbottom" / "RegionA")
    with pytest.raises(typer.Exit):
        check_pallet(workspace, other, tmp_path)


def test_a_bad_pallet_is_never_remembered(pallets: Path, tmp_path: Path) -> None:
    bad = tmp_path / "BkgOnly.json"
    bad.write_text(json.dumps({"channels": "nope"}))
    _, patchset = files(pallets / "staus" / "Region-combined")
    for _ in range(2):
        with pytest.raises(typer.Exit):
            check_pallet(PalletFile.read(bad, "--workspace"), patchset, tmp_path)
    assert not (tmp_path / "checked").exists()


def test_an_unreadable_remembered_check_is_checked_again(pallets: Path, tmp_path: Path) -> None:
    workspace, patchset = files(pallets / "staus" / "Region-combined")
    truth = check_pallet(workspace, patchset, tmp_path)
    (entry,) = (tmp_path / "checked").glob("*.json")
    entry.write_text('{"patches": [')  # half-written
    assert check_pallet(workspace, patchset, tmp_path) == truth
