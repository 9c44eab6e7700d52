"""What every request passes before the app reads its body: the tenant's key, and the size limit.

FastAPI reads (and spools) a request's body before it resolves dependencies, so an upload would be read in
full before its key was checked, and a body of any size would be taken. This ASGI middleware runs first:

- a request that carries a body to a tenant path (POST to /v1/jobs, /v1/files, /v1/batches, ...) without a
  valid key answers 401 before one byte of the body is read;
- a body over ROUTEYARD_MAX_UPLOAD_BYTES (plus room for the multipart form's own headers) answers 413: at once
  when Content-Length says so, else as soon as the bytes read pass the limit; and a file in a multipart form
  answers 413 as soon as the file itself passes the limit (jobs/api/upload_limit.py), whatever path takes it.

The routes still resolve the tenant themselves (jobs/api/app.py:tenant): this only makes the refusals come
first. Errors answer in each path's shape: OpenAI's envelope on /v1/files and /v1/batches, `{"detail"}` else.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers

from db.session import DATABASE_DOWN, database_unavailable
from jobs.api.upload_limit import FileParts
from jobs.services.tenants import tenant_for_key

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
FORM_OVERHEAD = 1024 * 1024  # a multipart body's boundaries, part headers and small form fields
MULTIPART = "multipart/form-data"
OPENAI_PATHS = ("/v1/files", "/v1/batches")


class BodyTooLarge(Exception):
    """Raised from `receive` when a body passes the limit; the middleware answers 413."""


def _is_tenant_path(path: str) -> bool:
    return path.startswith("/v1/") and not path.startswith("/v1/admin")


class RequestGuard:
    def __init__(self, app: ASGIApp, sf: sessionmaker[Session], max_upload_bytes: int) -> None:
        self.app, self.sf = app, sf
        self.max_body = max_upload_bytes + FORM_OVERHEAD
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        headers, path = Headers(scope=scope), scope["path"]
        if _is_tenant_path(path):
            try:
                known = await run_in_threadpool(self._known_key, headers.get("authorization"))
            except DATABASE_DOWN as exc:  # the app's handlers are not around this middleware: the same 503 here
                down = database_unavailable(exc)
                await _reply(send, path, 503, str(down), None, {"retry-after": str(down.retry_after_s)})
                return
            if not known:
                await _reply(send, path, 401, "missing or unknown API key: send 'Authorization: Bearer <API key>'",
                             "invalid_api_key")
                return
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            await self._too_large(send, path)
            return
        await self._limited(scope, receive, send)

    def _known_key(self, authorization: str | None) -> bool:
        if not authorization or not authorization.lower().startswith("bearer "):
            return False
        with self.sf() as session:
            return tenant_for_key(session, authorization[7:].strip()) is not None

    async def _limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app, counting the body's bytes; past the limit, 413 instead of whatever the app answers."""
        read, over, started = 0, False, False
        content_type = Headers(scope=scope).get("content-type", "")
        files = FileParts(content_type, self.max_upload_bytes) if content_type.startswith(MULTIPART) else None

        async def counting_receive() -> Message:
            nonlocal read, over
            message = await receive()
            if message["type"] == "http.request":
                read += len(message.get("body", b""))
                if files is not None:  # the file itself is held to the limit, not the limit and the form's room
                    files.feed(message.get("body", b""))
                if read > self.max_body or (files is not None and files.over):
                    over = True
                    raise BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if over:  # the app's answer to a body cut short (FastAPI makes it a 400): dropped for the 413
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except BodyTooLarge:
            pass
        if over and not started:
            await self._too_large(send, scope["path"], "the file" if files is not None and files.over else None)

    async def _too_large(self, send: Send, path: str, what: str | None = None) -> None:
        await _reply(send, path, 413, f"{what or 'the request'} is larger than the limit: an upload may have at "
                                      f"most {self.max_upload_bytes:,} bytes (ROUTEYARD_MAX_UPLOAD_BYTES)",
                     "file_too_large")


async def _reply(send: Send, path: str, status: int, message: str, code: str | None,
                 extra: dict[str, str] | None = None) -> None:
    if path.startswith(OPENAI_PATHS):
        kind = "server_error" if status >= 500 else "invalid_request_error"
        body: dict[str, Any] = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    else:
        body = {"detail": message}
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
               (b"connection", b"close")]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
