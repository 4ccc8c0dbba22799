"""A lean HTTP/1.1 keep-alive client for load generation on loopback.

The load generator shares the machine's cores with the server it measures;
a general-purpose client spends more CPU per request than the server does on
an idle poll, and its cost would be measured as the server's latency. This
one does only what the benchmarks need: one connection per simulated pilot,
JSON bodies, ``Content-Length`` replies, and a reconnect when the server
closed an idle connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any


class HttpError(RuntimeError):
    """A reply with a status of 400 or more."""


class Connection:
    """One keep-alive connection, used by one coroutine at a time."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self.host, self.port = host, port
        self._auth = f"Authorization: Bearer {token}\r\n"
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: Any) -> Any:
        """POST ``body`` as JSON; the decoded JSON reply (reconnects once if the server hung up)."""
        payload = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\n{self._auth}"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        ).encode()
        for attempt in (1, 2):
            try:
                return await self._exchange(head + payload)
            except (ConnectionError, asyncio.IncompleteReadError):
                await self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _exchange(self, request: bytes) -> Any:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        assert self._reader is not None
        self._writer.write(request)
        status_line = await self._reader.readuntil(b"\r\n")
        length = 0
        while (line := await self._reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        body = await self._reader.readexactly(length)
        status = int(status_line.split()[1])
        if status >= 400:
            raise HttpError(f"{status}: {body.decode(errors='replace')}")
        return json.loads(body)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError):
                await self._writer.wait_closed()
        self._reader = self._writer = None
