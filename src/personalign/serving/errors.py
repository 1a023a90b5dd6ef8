"""The serving layer's own errors (keys, conflicts, limits), beside the project's
(``DataError``, ``NotFoundError``, ...): the service raises them, and only the HTTP layer
(:mod:`.http`) maps them to status codes."""

from __future__ import annotations

from personalign.runtime.errors import PersonalignError


class AuthError(PersonalignError):
    """No API key, or one that is not known (HTTP 401)."""


class ForbiddenError(PersonalignError):
    """A known key asking for what it may not reach (HTTP 403)."""


class ConflictError(PersonalignError):
    """The request clashes with what exists (a user id taken; HTTP 409)."""


class LimitError(PersonalignError):
    """A limit was reached (too many opinions: HTTP 422 with the field; rate: HTTP 429)."""

    def __init__(self, message: str, *, field: str | None = None, status: int = 422):
        self.field, self.status = field, status
        super().__init__((f"field '{field}': " if field else "") + message)
