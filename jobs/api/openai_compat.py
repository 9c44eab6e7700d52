"""What makes the Files and Batches paths answer as OpenAI's do, so code written for OpenAI's SDK works
unchanged: errors in OpenAI's envelope, `{"error": {"message", "type", "param", "code"}}`, with the status
codes its SDK turns into its exception classes (a bad request is 400: openai.BadRequestError).

The errors are Routeyard's own (routeyard/errors.py), mapped by type here for these paths only; every other
path keeps the app's one handler (`{"detail": ...}`).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from db.session import DATABASE_DOWN, database_unavailable
from routeyard.errors import Conflict, InvalidInput, NotFound, Unavailable, UserError

ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
               409: "invalid_request_error", 413: "invalid_request_error", 503: "server_error"}


def openai_error(status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": ERROR_TYPES.get(status, "invalid_request_error"),
                                   "param": param, "code": code}}, status_code=status, headers=headers)


def _validation_error(exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    where = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
    param = ".".join(where) or None
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    message = f"{param or 'request'}: {first.get('msg', 'invalid')}{more}"
    code = "missing_required_parameter" if first.get("type") == "missing" else "invalid_value"
    return openai_error(400, message, param, code)


def _user_error(exc: UserError) -> JSONResponse:
    if isinstance(exc, InvalidInput):
        return openai_error(400, str(exc), code="invalid_value")
    if isinstance(exc, NotFound):
        return openai_error(404, str(exc), code="not_found")
    if isinstance(exc, Conflict):
        return openai_error(409, str(exc), code="conflict")
    return openai_error(exc.http_status, str(exc))


class OpenAIRoute(APIRoute):
    """A route whose errors answer in OpenAI's envelope (set as an APIRouter's route_class)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                return _validation_error(exc)
            except HTTPException as exc:
                code = "invalid_api_key" if exc.status_code == 401 else None
                return openai_error(exc.status_code, str(exc.detail), code=code)
            except UserError as exc:
                return _user_error(exc)
            except Unavailable as exc:
                return openai_error(503, str(exc), headers={"Retry-After": str(exc.retry_after_s)})
            except DATABASE_DOWN as exc:  # an outage: 503, to retry (the SDK retries 5xx itself)
                down = database_unavailable(exc)
                return openai_error(503, str(down), headers={"Retry-After": str(down.retry_after_s)})

        return handle
