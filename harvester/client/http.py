"""The one API client every user CLI uses: ``HPCAF_URL`` + ``HPCAF_TOKEN``, clear errors.

It rides through a harvester restart or a database outage: a request that
could not reach the harvester, or that the harvester answered ``503`` (nothing
was changed, try again: its ``Retry-After`` is honoured), is tried again with
an exponential back-off (stamina) for up to ``HPCAF_CLIENT_RETRY_S`` seconds
(default 120; 0 turns retries off). A request that may have been carried out
before its answer was lost is retried only when doing it twice is harmless
(reads, uploads by content, downloads); a task submission is retried only when
it never reached the harvester (the connection was refused), since even a
``503`` may follow a commit whose answer was lost.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import stamina

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_RETRY_S = 120.0
RETRIED_STATUSES = frozenset({502, 503, 504})
"""A proxy or the harvester saying it cannot answer now; 503 also means nothing changed."""
SAFE_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "PATCH"})

log = logging.getLogger(__name__)


class _Unavailable(Exception):
    """A response worth trying again (kept out of the retried call's caller)."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response

    @property
    def retry_after_s(self) -> float | None:
        value = self.response.headers.get("Retry-After", "")
        try:
            return max(0.0, min(float(value), 60.0))
        except ValueError:
            return None


def _retry_policy(idempotent: bool) -> Any:
    """The stamina hook: whether (and after how long) an error is tried again."""

    def decide(exc: Exception) -> bool | float:
        if isinstance(exc, _Unavailable):
            if not idempotent:
                # even a 503 may come after a commit whose answer was lost: a request
                # that is not harmless to repeat is left to the caller
                return False
            return exc.retry_after_s or True
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            return True  # never reached the harvester
        return idempotent and isinstance(exc, httpx.TransportError)

    return decide


def retry_window_s() -> float:
    """How long a request is tried again (``HPCAF_CLIENT_RETRY_S``, default 120 s)."""
    value = os.environ.get("HPCAF_CLIENT_RETRY_S")
    try:
        return max(0.0, float(value)) if value else DEFAULT_RETRY_S
    except ValueError as exc:
        raise ClientError(f"HPCAF_CLIENT_RETRY_S={value!r} is not a number of seconds") from exc


class ClientError(Exception):
    """The server refused a request, or could not be reached; the message says why."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class HarvesterClient:
    """Thin typed wrapper over the REST API."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        timeout_s: float = 60.0,
        retry_s: float | None = None,
    ) -> None:
        self.url = (url or os.environ.get("HPCAF_URL") or DEFAULT_URL).rstrip("/")
        self.retry_s = retry_window_s() if retry_s is None else retry_s
        token = token or os.environ.get("HPCAF_TOKEN")
        if not token:
            raise ClientError(
                "no token: set HPCAF_TOKEN (an admin creates one with "
                "'harvester token create USER')"
            )
        self._http = httpx.Client(
            base_url=self.url, timeout=timeout_s, headers={"Authorization": f"Bearer {token}"}
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> HarvesterClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def request(
        self, method: str, path: str, *, idempotent: bool | None = None, **kwargs: Any
    ) -> httpx.Response:
        """One API call, tried again while the harvester cannot answer (module docstring).

        ``idempotent``: whether carrying the request out twice is harmless (default:
        by the method; a POST is not, unless the caller says so).
        """
        safe = method.upper() in SAFE_METHODS if idempotent is None else idempotent
        try:
            response = self._send(method, path, safe, **kwargs)
        except _Unavailable as exc:
            response = exc.response
        except httpx.TransportError as exc:
            raise ClientError(f"cannot reach the harvester at {self.url}: {exc}") from exc
        if response.status_code >= 400:
            raise ClientError(_detail(response), response.status_code)
        return response

    def _send(self, method: str, path: str, idempotent: bool, **kwargs: Any) -> httpx.Response:
        for attempt in self._attempts(idempotent):
            with attempt:
                response = self._http.request(method, path, **kwargs)
                if response.status_code in RETRIED_STATUSES:
                    raise _Unavailable(response)
        return response

    def _attempts(self, idempotent: bool) -> Iterator[stamina.Attempt]:
        """The attempts at one call (a single one when retries are off); the first retry
        is logged, once."""
        retrying = self.retry_s > 0
        for attempt in stamina.retry_context(
            on=_retry_policy(idempotent),
            attempts=None if retrying else 1,
            timeout=self.retry_s if retrying else None,
            wait_initial=0.5,
            wait_max=10.0,
        ):
            if attempt.num == 2:
                log.warning(
                    "the harvester at %s cannot answer now; trying again for up to %.0fs",
                    self.url,
                    self.retry_s,
                )
            yield attempt

    def get(self, path: str, **params: Any) -> Any:
        clean = {k: v for k, v in params.items() if v is not None}
        return self.request("GET", path, params=clean).json()

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json=body).json()

    # -- tasks ---------------------------------------------------------------------

    def submit_task(self, params: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.post("/api/v1/tasks", params)
        return result

    def task(self, task_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self.get(f"/api/v1/tasks/{task_id}")
        return result

    def jobs(self, task_id: int, **params: Any) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.get(f"/api/v1/tasks/{task_id}/jobs", **params)
        return result

    def upload(self, path: Path, name: str | None = None) -> dict[str, Any]:
        """Upload a local file (an input); returns its registration with the sha256."""
        return self.upload_bytes(path.read_bytes(), name or path.name)

    def holds(self, sha256: str) -> bool:
        """Whether the harvester holds this content as one of the caller's files (then a
        task may name it as an input without uploading it again)."""
        try:
            self.request("HEAD", f"/api/v1/files/{sha256}")
        except ClientError as exc:
            if exc.status_code == 404:
                return False
            raise
        return True

    def upload_bytes(self, data: bytes, name: str) -> dict[str, Any]:
        """Upload content under ``name``; the store keeps each sha256 once."""
        sha = hashlib.sha256(data).hexdigest()
        response = self.request(  # by content: storing it twice stores it once
            "POST",
            "/api/v1/files",
            params={"name": name, "sha256": sha},
            content=data,
            idempotent=True,
        )
        result: dict[str, Any] = response.json()
        return result

    def download(self, sha256: str, target: Path) -> None:
        """Download a file by its sha256 into ``target``, checked; tried again as any
        read is. Nothing is left at ``target`` unless the whole file arrived intact."""
        tmp = target.with_name(target.name + ".part")
        try:
            for attempt in self._attempts(idempotent=True):
                with attempt:
                    digest = self._download_once(sha256, tmp)
        except _Unavailable as exc:
            tmp.unlink(missing_ok=True)
            raise ClientError(_detail(exc.response), exc.response.status_code) from exc
        except httpx.TransportError as exc:
            tmp.unlink(missing_ok=True)
            raise ClientError(f"cannot reach the harvester at {self.url}: {exc}") from exc
        if digest != sha256:
            tmp.unlink(missing_ok=True)
            raise ClientError(f"{target.name}: checksum mismatch after download")
        tmp.replace(target)

    def fetch(self, sha256: str) -> bytes:
        """A stored file's content, checked against its sha256 (small files: results)."""
        data = self.request("GET", f"/api/v1/files/{sha256}").content
        if hashlib.sha256(data).hexdigest() != sha256:
            raise ClientError(f"file {sha256}: checksum mismatch after download")
        return data

    def _download_once(self, sha256: str, tmp: Path) -> str:
        """One download into ``tmp``; the sha256 of what arrived."""
        with self._http.stream("GET", f"/api/v1/files/{sha256}") as response:
            if response.status_code in RETRIED_STATUSES:
                response.read()
                raise _Unavailable(response)
            if response.status_code >= 400:
                response.read()
                raise ClientError(_detail(response), response.status_code)
            digest = hashlib.sha256()
            with tmp.open("wb") as fh:
                for chunk in response.iter_bytes():
                    digest.update(chunk)
                    fh.write(chunk)
        return digest.hexdigest()


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:300]}"
    detail = body.get("detail") if isinstance(body, dict) else body
    if isinstance(detail, list):  # pydantic validation errors
        parts = []
        for item in detail:
            loc = ".".join(str(p) for p in item.get("loc", []) if p != "body")
            parts.append(f"{loc}: {item.get('msg')}" if loc else str(item.get("msg")))
        detail = "; ".join(parts)
    return f"HTTP {response.status_code}: {detail}"
