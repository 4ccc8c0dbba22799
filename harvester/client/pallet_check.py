"""A pallet checked once per content: pyhf's validation, remembered by digest.

Validating a pallet with pyhf (the workspace schema, the patchset's digest
against the workspace) costs an import of pyhf and a parse of both documents,
more than a second on a large pallet, and gives the same answer for the same
bytes. So what a successful validation found (the patch names, their metadata
values, the labels) is kept in the user's cache under the two files' sha256
and the pyhf version that checked them; a second campaign on the same pallet
reads that instead. Bad input is never remembered: only a pallet that passed is.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harvester.client.common import fail, optional

CHECKED_FORMAT = 1
"""The layout of a remembered check (a new layout never reads an old one)."""


@dataclass(frozen=True)
class PalletFile:
    """One of the pallet's two files, read once: its bytes and their sha256."""

    path: Path
    raw: bytes
    sha256: str

    @classmethod
    def read(cls, path: Path, what: str) -> PalletFile:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise fail(f"{what} {path}: {exc.strerror or exc}") from exc
        return cls(path, raw, hashlib.sha256(raw).hexdigest())

    def document(self, what: str) -> Any:
        """The JSON document (gzipped or plain); a clear error when it is not JSON."""
        raw = self.raw
        if raw[:2] == b"\x1f\x8b":
            try:
                raw = gzip.decompress(raw)
            except OSError as exc:
                raise fail(f"{what} {self.path}: not a valid gzip file ({exc})") from exc
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise fail(f"{what} {self.path}: not JSON ({exc})") from exc


@dataclass(frozen=True)
class CheckedPallet:
    """What pyhf's validation of a pallet found: every patch in the patchset's order,
    each with its metadata values, and the patchset's labels."""

    patches: dict[str, list[float]]
    labels: list[str]

    def chosen(self, names: list[str]) -> list[str]:
        """The patches to fit: ``names`` (each must exist), or all of them."""
        if not names:
            return list(self.patches)
        missing = [n for n in names if n not in self.patches]
        if missing:
            example = next(iter(self.patches), "")
            raise fail(
                f"no patch named {', '.join(missing)} in the patchset "
                f"({len(self.patches)} patches, e.g. {example})"
            )
        return names


def check_pallet(workspace: PalletFile, patchset: PalletFile, cache: Path | None) -> CheckedPallet:
    """The pallet checked with pyhf, or what an earlier check of the same bytes found."""
    version = _pyhf_version()
    remembered = _remembered(cache, workspace, patchset, version)
    if remembered is not None:
        return remembered
    checked = validate(workspace.document("--workspace"), patchset.document("--patchset"))
    if cache is not None and version is not None:
        _remember(cache, workspace, patchset, version, checked)
    return checked


def validate(workspace_doc: Any, patchset_doc: Any) -> CheckedPallet:
    """Check both documents with pyhf (the slow truth the remembered checks stand for)."""
    pyhf = optional("pyhf", "fit", "pfit (it checks the pallet with pyhf)")
    try:
        workspace = pyhf.Workspace(workspace_doc)
    except Exception as exc:
        raise fail(f"--workspace is not a pyhf workspace: {_first_line(exc)}") from exc
    try:
        patchset = pyhf.PatchSet(patchset_doc)
    except Exception as exc:
        raise fail(f"--patchset is not a pyhf patchset: {_first_line(exc)}") from exc
    try:
        patchset.verify(workspace)
    except Exception as exc:
        raise fail(
            "--patchset was made for another workspace: its digest does not match "
            f"--workspace ({_first_line(exc)})"
        ) from exc
    return CheckedPallet(
        patches={p.name: [_number(v) for v in p.values] for p in patchset.patches},
        labels=[str(label) for label in patchset.labels or []],
    )


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")  # a non-numeric coordinate: --adaptive refuses such patches


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def _pyhf_version() -> str | None:
    try:
        return importlib.metadata.version("pyhf")
    except importlib.metadata.PackageNotFoundError:
        return None


def _entry(cache: Path, workspace: PalletFile, patchset: PalletFile, version: str) -> Path:
    key = f"{CHECKED_FORMAT}:{version}:{workspace.sha256}:{patchset.sha256}"
    return cache / "checked" / f"{hashlib.sha256(key.encode()).hexdigest()}.json"


def _remembered(
    cache: Path | None, workspace: PalletFile, patchset: PalletFile, version: str | None
) -> CheckedPallet | None:
    if cache is None or version is None:
        return None
    try:
        document = json.loads(_entry(cache, workspace, patchset, version).read_text())
        return CheckedPallet(
            patches={str(k): [float(x) for x in v] for k, v in document["patches"].items()},
            labels=[str(label) for label in document["labels"]],
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # nothing remembered (or an unreadable entry): check again


def _remember(
    cache: Path, workspace: PalletFile, patchset: PalletFile, version: str, checked: CheckedPallet
) -> None:
    entry = _entry(cache, workspace, patchset, version)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_suffix(f".{os.getpid()}.part")
        tmp.write_text(json.dumps({"patches": checked.patches, "labels": checked.labels}))
        tmp.replace(entry)
    except OSError:
        pass  # a cache that cannot be written only costs the next check its time
