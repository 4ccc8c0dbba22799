"""The one API client every user CLI uses: ``HPCAF_URL`` + ``HPCAF_TOKEN``, clear errors."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8080"


class ClientError(Exception):
    """The server refused a request, or could not be reached; the message says why."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class HarvesterClient:
    """Thin typed wrapper over the REST API."""

    def __init__(
        self, url: str | None = None, token: str | None = None, timeout_s: float = 60.0
    ) -> None:
        self.url = (url or os.environ.get("HPCAF_URL") or DEFAULT_URL).rstrip("/")
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

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ClientError(f"cannot reach the harvester at {self.url}: {exc}") from exc
        if response.status_code >= 400:
            raise ClientError(_detail(response), response.status_code)
        return response

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

    def upload_bytes(self, data: bytes, name: str) -> dict[str, Any]:
        """Upload content under ``name``; the store keeps each sha256 once."""
        sha = hashlib.sha256(data).hexdigest()
        response = self.request(
            "POST", "/api/v1/files", params={"name": name, "sha256": sha}, content=data
        )
        result: dict[str, Any] = response.json()
        return result

    def download(self, sha256: str, target: Path) -> None:
        with self._http.stream("GET", f"/api/v1/files/{sha256}") as response:
            if response.status_code >= 400:
                response.read()
                raise ClientError(_detail(response), response.status_code)
            digest = hashlib.sha256()
            tmp = target.with_name(target.name + ".part")
            with tmp.open("wb") as fh:
                for chunk in response.iter_bytes():
                    digest.update(chunk)
                    fh.write(chunk)
        if digest.hexdigest() != sha256:
            tmp.unlink(missing_ok=True)
            raise ClientError(f"{target.name}: checksum mismatch after download")
        tmp.replace(target)


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
