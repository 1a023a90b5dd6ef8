"""What every route depends on: the service of the app, and who is calling."""

from __future__ import annotations

import time

from fastapi import Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from personalign.service.core import PersonalizationService, Principal

bearer = HTTPBearer(auto_error=False, description="An API key: the admin's or a user's.")


def service_of(request: Request) -> PersonalizationService:
    return request.app.state.service


async def who(request: Request,
              creds: HTTPAuthorizationCredentials | None = Security(bearer)) -> Principal:
    """The caller of the request's key, within its rate limit. On the event loop (no thread
    hop per request); a key not yet seen is looked up in the store on a worker thread."""
    service = service_of(request)
    token = creds.credentials if creds else None
    principal = service.keys.known_key(token)
    if principal is None:
        principal = await run_in_threadpool(service.keys.authenticate, token)
    at = time.monotonic()
    service.rate.check(principal.key_id, at)
    if service.keys.needs_touch(principal, at):
        await run_in_threadpool(service.keys.touch, principal, at)
    return principal
