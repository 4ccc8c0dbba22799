"""The content-addressed file store and file registration.

Blobs live at ``<store>/<sha[:2]>/<sha>``. An upload is streamed into a
temporary file while it is hashed and counted, and renamed into place only
when complete, within the size limit and matching the declared checksum: an
interrupted or oversized upload leaves nothing behind.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from harvester.errors import InvalidRequest, PayloadTooLarge
from protocol.messenger import open_regular

SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
SAFE_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-+]{0,254}$")


def check_file_name(name: str, *, what: str = "file name") -> str:
    """A plain file name: no '/', no '..', no leading dot or dash."""
    if not SAFE_NAME_PATTERN.match(name) or ".." in name:
        raise InvalidRequest(
            f"invalid {what} {name!r}: use letters, digits, '.', '_', '-' or '+', "
            "no '/' and no '..'"
        )
    return name


def check_sha256(value: str) -> str:
    if not SHA256_PATTERN.match(value):
        raise InvalidRequest(f"invalid sha256 {value!r}: 64 lowercase hex digits expected")
    return value


def decode_carried(name: str, sha256: str, content_b64: str, size: int | None = None) -> bytes:
    """The content of a file carried in a request as base64, checked against its declared
    sha256 (and ``size`` when one is declared)."""
    try:
        data = base64.b64decode(content_b64, validate=True)
    except binascii.Error as exc:
        raise InvalidRequest(f"{name}: content_b64 is not base64: {exc}") from exc
    if size is not None and len(data) != size:
        raise InvalidRequest(f"{name}: reported size {size}, carried {len(data)} bytes")
    got = hashlib.sha256(data).hexdigest()
    if got != check_sha256(sha256):
        raise InvalidRequest(f"{name}: checksum mismatch: declared sha256 {sha256}, received {got}")
    return data


class FileStore:
    """Blobs by sha256 under one folder."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes

    def path(self, sha256: str) -> Path:
        check_sha256(sha256)
        return self.root / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def size(self, sha256: str) -> int:
        return self.path(sha256).stat().st_size

    def put_carried(self, name: str, sha256: str, content_b64: str, size: int | None = None) -> int:
        """Store a small file carried in a request as base64 (checked against its declared
        sha256, and ``size`` when one is declared); its size."""
        data = decode_carried(name, sha256, content_b64, size)
        self.put_verified(data, sha256)
        return len(data)

    def put_verified(self, data: bytes, sha256: str) -> None:
        """Store a small blob carried in a request, already checked against its sha256 by
        :func:`decode_carried`, under an upload's other rules: within the size limit,
        whole, durable."""
        if len(data) > self.max_bytes:
            raise PayloadTooLarge(f"file is over the limit of {self.max_bytes} bytes")
        final = self.path(sha256)
        if final.is_file():
            return
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=final.parent, prefix=".inline-")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)

    def put_file(self, source: Path, expected_sha256: str) -> int:
        """Store a file handed over on a filesystem (the shared-filesystem messenger's
        uploads) under an upload's rules: a regular file, not a link; within the size
        limit, however it grows while read; checked against its declared sha256; whole
        and durable. Its size."""
        self.root.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=".handed-")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as fh, open_regular(source) as src:
                while chunk := src.read(1 << 20):
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise PayloadTooLarge(f"file is over the limit of {self.max_bytes} bytes")
                    digest.update(chunk)
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            if digest.hexdigest() != expected_sha256:
                raise InvalidRequest(
                    f"the file handed over does not match its declared sha256 {expected_sha256}"
                )
            final = self.path(expected_sha256)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
            return size
        finally:
            tmp.unlink(missing_ok=True)

    async def put_stream(
        self,
        chunks: AsyncIterator[bytes],
        *,
        expected_sha256: str | None = None,
        declared_size: int | None = None,
    ) -> tuple[str, int]:
        """Store a stream; returns (sha256, size). Refuses oversize before storing."""
        if declared_size is not None and declared_size > self.max_bytes:
            raise PayloadTooLarge(
                f"upload of {declared_size} bytes is over the limit of {self.max_bytes} bytes"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=".upload-")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as fh:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise PayloadTooLarge(f"upload is over the limit of {self.max_bytes} bytes")
                    digest.update(chunk)
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            sha = digest.hexdigest()
            if expected_sha256 is not None and sha != expected_sha256:
                raise InvalidRequest(
                    f"checksum mismatch: declared sha256 {expected_sha256}, received {sha}"
                )
            final = self.path(sha)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
            return sha, size
        finally:
            tmp.unlink(missing_ok=True)
