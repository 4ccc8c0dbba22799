"""A ceiling on request bodies, so one request cannot fill the harvester's memory.

Bodies are read whole before they are validated; without a ceiling a client
could send a gigabyte of JSON. File uploads are exempt: the file store streams
them to disk under ``max_upload_bytes``.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class RequestBodyLimit:
    """413 for a body over ``max_bytes``: at once when Content-Length says so,
    else as soon as more than that has arrived."""

    def __init__(self, app: ASGIApp, max_bytes: int, exempt_paths: tuple[str, ...]) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt_paths = exempt_paths
        self.message = (
            f"request body over the limit of {max_bytes} bytes (setting max_request_bytes)"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt_paths:
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await JSONResponse({"detail": self.message}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI re-raises an HTTPException met while reading the body
                    raise HTTPException(status_code=413, detail=self.message)
            return message

        await self.app(scope, counted_receive, send)
