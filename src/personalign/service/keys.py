"""API keys: stored as SHA-256 hashes and a shown prefix, checked per request (known keys
from memory, others from the store), listed, revoked and rotated; the configured admin key is
the only admin key. Requests per key are rate-limited here too."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import threading
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Any, Callable

from sqlalchemy import select

from personalign.runtime.errors import ConfigError, NotFoundError
from personalign.serving.errors import AuthError, ConflictError, LimitError
from personalign.service.store import Store
from personalign.service.store.models import ApiKeyRow, now, user_row

log = logging.getLogger(__name__)

KEY_ID = re.compile(r"[0-9a-f]{32}")
KEY_PREFIX = "pa_"
KEY_SHOWN = 10     # characters of a key kept and listed (of 46)
TOUCH_EVERY = 60.0  # seconds between writes of a key's last_used_at


@dataclass
class Principal:
    """Who is calling: the admin, or one user's key."""

    key_id: str
    role: str
    user_id: str | None

    @property
    def admin(self) -> bool:
        return self.role == "admin"


def hash_key(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_dict(row: ApiKeyRow) -> dict[str, Any]:
    def when(t):
        return None if t is None else t.isoformat()

    return {"id": row.id, "prefix": row.prefix, "created_at": when(row.created_at),
            "last_used_at": when(row.last_used_at), "revoked_at": when(row.revoked_at)}


class RateLimiter:
    """Requests per key in a sliding minute (in memory, per process)."""

    def __init__(self, per_minute: int):
        self.per_minute = per_minute
        self._seen: dict[str, deque] = defaultdict(deque)
        self._lock = threading.Lock()

    def check(self, key_id: str, at: float) -> None:
        with self._lock:
            seen = self._seen[key_id]
            while seen and seen[0] <= at - 60:
                seen.popleft()
            if len(seen) >= self.per_minute:
                raise LimitError(f"more than {self.per_minute} requests in a minute for this "
                                 "key; retry later", status=429)
            seen.append(at)


class KeyRing:
    """The keys of one store. This process is the only writer, so known keys are cached in
    memory and dropped as they are revoked or their user deleted."""

    def __init__(self, store: Store, admin_key: str | None):
        self.store = store
        self._keys: dict[str, tuple[str, Principal]] = {}
        self._keys_lock = threading.Lock()
        self._key_epoch = 0  # bumped by every revocation and deletion
        self._touched: dict[str, float] = {}
        self.admin_configured = bool(admin_key)
        self.admin_key_created = self._ensure_admin(admin_key)

    @staticmethod
    def add(s, role: str, user_id: str | None = None) -> tuple[str, ApiKeyRow]:
        token = new_key()
        row = ApiKeyRow(id=uuid.uuid4().hex, key_hash=hash_key(token), prefix=token[:KEY_SHOWN],
                        role=role, user_id=user_id)
        s.add(row)
        return token, row

    def _ensure_admin(self, admin_key: str | None) -> str | None:
        """Make ``admin_key`` (hashed) the one admin key: any other admin key is revoked, so
        a changed configured value revokes the old one at start. With none configured and no
        admin key stored, create one and return it (shown once by the caller)."""
        with self.store.session() as s:
            admins = s.scalars(select(ApiKeyRow).where(ApiKeyRow.role == "admin",
                                                       ApiKeyRow.revoked_at.is_(None))).all()
            if admin_key:
                digest = hash_key(admin_key)
                revoked = 0
                for row in admins:
                    if row.key_hash != digest:
                        row.revoked_at = now()
                        revoked += 1
                if revoked:
                    log.warning("revoked %d admin key(s) other than the configured one", revoked)
                row = s.scalar(select(ApiKeyRow).where(ApiKeyRow.key_hash == digest))
                if row is None:
                    # No prefix kept: an operator's key may be short enough to guess from one.
                    s.add(ApiKeyRow(id=uuid.uuid4().hex, key_hash=digest, role="admin"))
                elif row.role != "admin":
                    raise ConfigError("the configured admin key is a user's key; choose another")
                else:
                    row.revoked_at = None
                return None
            if admins:
                return None
            return self.add(s, "admin")[0]

    def known_key(self, token: str | None) -> Principal | None:
        """The caller of a key already seen (no store access), or None: ask
        :meth:`authenticate`."""
        if not token:
            return None
        digest = hash_key(token)
        known = self._keys.get(digest)
        if known is None or not hmac.compare_digest(known[0], digest):
            return None
        return known[1]

    def authenticate(self, token: str | None) -> Principal:
        if not token:
            raise AuthError("no API key: send 'Authorization: Bearer <key>'")
        digest = hash_key(token)
        known = self._keys.get(digest)
        if known is None:
            epoch = self._key_epoch
            with self.store.session() as s:
                row = s.scalar(select(ApiKeyRow).where(ApiKeyRow.key_hash == digest,
                                                       ApiKeyRow.revoked_at.is_(None)))
            if row is None:
                raise AuthError("invalid API key")
            known = (row.key_hash, Principal(row.id, row.role, row.user_id))
            with self._keys_lock:
                if epoch == self._key_epoch:  # no revocation or deletion raced this lookup
                    self._keys[digest] = known
        # The lookup is by hash; the final comparison is in constant time all the same.
        if not hmac.compare_digest(known[0], digest):
            raise AuthError("invalid API key")
        return known[1]

    def needs_touch(self, who: Principal, at: float) -> bool:
        """Whether the key's ``last_used_at`` is due a write (at most one per minute)."""
        return at - self._touched.get(who.key_id, -1e9) >= TOUCH_EVERY

    def touch(self, who: Principal, at: float) -> None:
        self._touched[who.key_id] = at
        with self.store.session() as s:
            row = s.get(ApiKeyRow, who.key_id)
            if row is not None:
                row.last_used_at = now()

    def forget(self, drop: Callable[[Principal], bool]) -> None:
        """Drop cached keys whose principal ``drop`` matches (revoked or deleted)."""
        with self._keys_lock:
            self._key_epoch += 1
            for digest in [d for d, (_, p) in self._keys.items() if drop(p)]:
                self._keys.pop(digest, None)

    def list(self, user_id: str | None) -> list[dict[str, Any]]:
        """The active keys of a user (``None``: the admin's): id, prefix and times only."""
        query = select(ApiKeyRow).where(ApiKeyRow.revoked_at.is_(None))
        if user_id is None:
            query = query.where(ApiKeyRow.role == "admin")
        else:
            query = query.where(ApiKeyRow.role == "user", ApiKeyRow.user_id == user_id)
        with self.store.session() as s:
            if user_id is not None:
                user_row(s, user_id)
            rows = s.scalars(query.order_by(ApiKeyRow.created_at)).all()
            return [key_dict(r) for r in rows]

    def new_user_key(self, user_id: str) -> tuple[str, dict[str, Any]]:
        with self.store.session() as s:
            user_row(s, user_id)
            token, row = self.add(s, "user", user_id)
            s.flush()
            return token, key_dict(row)

    @staticmethod
    def _active_key(s, user_id: str | None, key_id: str) -> ApiKeyRow:
        row = s.get(ApiKeyRow, key_id) if KEY_ID.fullmatch(key_id) else None
        if (row is None or row.revoked_at is not None or row.user_id != user_id
                or (row.role == "admin") != (user_id is None)):
            raise NotFoundError(f"no active key {key_id!r} here")
        return row

    def revoke(self, user_id: str | None, key_id: str) -> dict[str, Any]:
        """Revoke one active key of ``user_id`` (``None``: an admin key); refused 404 for a
        key that is not theirs or not active. It stops working at once."""
        with self.store.session() as s:
            row = self._active_key(s, user_id, key_id)
            row.revoked_at = now()
            out = key_dict(row)
        self.forget(lambda p: p.key_id == key_id)
        return out

    def rotate(self, user_id: str | None, key_id: str) -> tuple[str, dict[str, Any]]:
        """A new key in place of ``key_id``, which is revoked in the same transaction."""
        with self.store.session() as s:
            row = self._active_key(s, user_id, key_id)
            if user_id is None and self.admin_configured:
                raise ConflictError("the admin key comes from the server's configuration: "
                                    "change it there and restart")
            row.revoked_at = now()
            token, new = self.add(s, row.role, user_id)
            s.flush()
            out = key_dict(new)
        self.forget(lambda p: p.key_id == key_id)
        return token, out
