"""HTTP plumbing both OpenAI-compatible front ends share: OpenAI's error object for every
error (project errors, validation, routing, unexpected ones), request ids, and a body limit.

Every error is ``{"error": {"message", "type", "param", "code", "request_id"}}``: ``param``
names the offending field, ``request_id`` (also the ``x-request-id`` header) finds the
server's log line. The log keeps, per request: its id, method, route *template* (no user id,
no text), status and duration.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from personalign.runtime.errors import ModelError, NotFoundError, PersonalignError
from personalign.serving.errors import AuthError, ConflictError, ForbiddenError, LimitError

log = logging.getLogger("personalign.serving.http")


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None,
               request_id: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code,
                      "request_id": request_id}}


def request_id(request: Request) -> str | None:
    return request.scope.get("state", {}).get("request_id")


def status_of(exc: PersonalignError, openai_route: bool) -> tuple[int, str, str | None]:
    if isinstance(exc, AuthError):
        return 401, "authentication_error", "invalid_api_key"
    if isinstance(exc, ForbiddenError):
        return 403, "permission_error", "forbidden"
    if isinstance(exc, NotFoundError):
        return 404, "not_found_error", "not_found"
    if isinstance(exc, ConflictError):
        return 409, "conflict_error", "conflict"
    if isinstance(exc, LimitError):
        return exc.status, ("rate_limit_error" if exc.status == 429 else
                            "invalid_request_error"), "limit_exceeded"
    if isinstance(exc, ModelError):
        return 503, "server_error", "model_unavailable"
    return (400 if openai_route else 422), "invalid_request_error", "invalid_value"


def field_name(loc: tuple) -> str:
    # pydantic names the branch of a union or a validator in the location: not a field
    parts = [str(p) for p in loc if p != "body" and not (
        isinstance(p, str) and ("[" in p or "(" in p))]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out


class BodyLimit:
    """Refuses bodies over ``max_bytes`` (by Content-Length, and by counting when chunked)
    before the app reads them."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = JSONResponse(error_body(
            f"request body is larger than {self.max_bytes} bytes", "invalid_request_error",
            None, "body_too_large", scope.get("state", {}).get("request_id")), status_code=413)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await too_big(scope, receive, send)
        seen, refused = 0, False

        async def counted():
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # Answer now; the app sees a client that went away, and anything it
                    # still sends is dropped.
                    refused = True
                    await too_big(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            if not refused:
                await send(message)

        await self.app(scope, counted, guarded_send)


class RequestIds:
    """Gives each request an id (``x-request-id``), logs one line per request without user
    ids or text, and turns any unexpected error into a 500 in the OpenAI error shape (its
    traceback logged here only), so the connection stays usable."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = "req_" + uuid.uuid4().hex[:20]
        scope.setdefault("state", {})["request_id"] = rid
        started, status, t0 = False, 500, time.perf_counter()

        async def tagged(message):
            nonlocal started, status
            if message["type"] == "http.response.start":
                started, status = True, message["status"]
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"x-request-id", rid.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, tagged)
        except Exception:
            log.exception("request %s failed", rid)
            if not started:
                await JSONResponse(error_body(
                    "internal error; the server's log has the details under this request id",
                    "server_error", None, "internal_error", rid), status_code=500,
                    headers={"x-request-id": rid})(scope, receive, send)
                status = 500
        finally:
            route = getattr(scope.get("route"), "path", None) or "(no route)"
            log.info("%s %s %s %d %.0f ms", rid, scope.get("method"), route, status,
                     1000 * (time.perf_counter() - t0))


def install_errors(app: FastAPI, openai_route: Callable[[Request], bool]) -> None:
    """Every error of ``app`` as OpenAI's error object; ``openai_route(request)`` says where
    an invalid request is 400 (OpenAI's status) rather than 422."""

    @app.exception_handler(PersonalignError)
    async def _project_error(request: Request, exc: PersonalignError):
        status, kind, code = status_of(exc, openai_route(request))
        return JSONResponse(error_body(str(exc), kind, getattr(exc, "field", None), code,
                                       request_id(request)), status_code=status,
                            headers={"WWW-Authenticate": "Bearer"} if status == 401 else None)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        param = field_name(tuple(first.get("loc", ())))
        if first.get("type") == "json_invalid":
            message, param = "malformed JSON: " + str(first.get("ctx", {}).get(
                "error", first.get("msg"))), None
        else:
            message = (f"field '{param}': " if param else "") + first.get("msg", "invalid")
        more = len(exc.errors()) - 1
        if more:
            message += f" (and {more} more)"
        return JSONResponse(error_body(message, "invalid_request_error", param or None,
                                       first.get("type"), request_id(request)),
                            status_code=400 if openai_route(request) else 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return JSONResponse(error_body(str(exc.detail), "invalid_request_error", None,
                                       str(exc.status_code), request_id(request)),
                            status_code=exc.status_code)

    app.add_middleware(RequestIds)
