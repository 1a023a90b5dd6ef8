"""The service's tables (SQLAlchemy 2 declarative models).

Every row that holds a user's data carries ``user_id`` with ``ON DELETE CASCADE``; deletion
also removes those rows explicitly (and counts them), so it does not depend on the database
enforcing foreign keys. The deletion log holds no personal data: no user id, no text.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from personalign.runtime.errors import NotFoundError


def now() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


def user_fk() -> ForeignKey:
    return ForeignKey("users.id", ondelete="CASCADE")


class UserRow(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    profile: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


def user_row(session, user_id: str) -> "UserRow":
    """The user's row; NotFoundError when there is none."""
    row = session.get(UserRow, user_id)
    if row is None:
        raise NotFoundError(f"no user {user_id!r}")
    return row


class ApiKeyRow(Base):
    """An API key, stored as the SHA-256 of the token (the token itself is shown once) and
    its first characters (``prefix``: enough to tell keys apart in a list, too few to use).
    A revoked key keeps its row (``revoked_at``) until its user is deleted."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    role: Mapped[str] = mapped_column(String(16))  # admin | user
    user_id: Mapped[str | None] = mapped_column(String(128), user_fk(), nullable=True, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    prefix: Mapped[str | None] = mapped_column(String(16), nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class OpinionRow(Base):
    __tablename__ = "opinions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(128), user_fk(), index=True)
    question: Mapped[str] = mapped_column(Text)
    options: Mapped[list[str]] = mapped_column(JSON)
    answer: Mapped[int] = mapped_column(Integer)


class PreferencePairRow(Base):
    __tablename__ = "preference_pairs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(128), user_fk(), index=True)
    prompt: Mapped[str] = mapped_column(Text)
    chosen: Mapped[str] = mapped_column(Text)
    rejected: Mapped[str] = mapped_column(Text)


class PersonalizationRow(Base):
    """A learned personalization: the method's saved form (Fermi: the prompt pool with each
    prompt's RoP train correctness; FSPO: the trained model reference and the user's shots)."""

    __tablename__ = "personalizations"

    user_id: Mapped[str] = mapped_column(String(128), user_fk(), primary_key=True)
    method: Mapped[str] = mapped_column(String(64))
    saved: Mapped[dict[str, Any]] = mapped_column(JSON)
    job_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class JobRow(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(128), user_fk(), index=True)
    method: Mapped[str] = mapped_column(String(256))
    preset: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), index=True)  # queued|running|done|failed
    stage: Mapped[str] = mapped_column(String(64), default="queued")
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class DeletionLogRow(Base):
    """That a deletion happened and what it removed (counts only: no id, no text)."""

    __tablename__ = "deletion_log"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    deleted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    removed: Mapped[dict[str, Any]] = mapped_column(JSON)
