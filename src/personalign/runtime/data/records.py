"""Typed records shared by every method: users, their opinions, preference pairs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Opinion:
    """One multiple-choice question with the user's answer (0-based index into ``options``)."""

    question: str
    options: tuple[str, ...]
    answer: int
    qid: str | None = None
    topic: str | None = None
    ordinal: tuple[float | None, ...] | None = None
    # Population label distribution over options when known (GlobalOpinionQA).
    distribution: tuple[float, ...] | None = None

    @property
    def answer_text(self) -> str:
        return self.options[self.answer]

    def without_option(self, text: str) -> "Opinion":
        """Drop an option (e.g. "Refused") that is never the answer, remapping indices."""
        if text not in self.options:
            return self
        keep = [i for i, o in enumerate(self.options) if o != text]
        if self.answer not in keep:
            raise ValueError(f"cannot drop option {text!r}: it is the answer")
        return Opinion(
            question=self.question,
            options=tuple(self.options[i] for i in keep),
            answer=keep.index(self.answer),
            qid=self.qid,
            topic=self.topic,
            ordinal=None if self.ordinal is None else tuple(self.ordinal[i] for i in keep),
            distribution=None if self.distribution is None
            else tuple(self.distribution[i] for i in keep),
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["options"] = list(self.options)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Opinion":
        """The inverse of :meth:`to_dict` (for saved, already validated records)."""
        tuples = {k: tuple(d[k]) for k in ("options", "ordinal", "distribution")
                  if d.get(k) is not None}
        return cls(**{**d, **tuples})


@dataclass(frozen=True)
class User:
    """A person: an id, an optional profile (field -> value) and their past opinions."""

    user_id: str
    profile: dict[str, str] = field(default_factory=dict)
    opinions: tuple[Opinion, ...] = ()
    description: str | None = None
    # Labeled preferences of this user (FSPO's shots), beside or instead of opinions.
    pairs: tuple["PreferencePair", ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "profile": dict(self.profile),
                "description": self.description,
                "opinions": [o.to_dict() for o in self.opinions],
                **({"pairs": [p.to_dict() for p in self.pairs]} if self.pairs else {})}


@dataclass(frozen=True)
class PreferencePair:
    """One labeled preference of one user, in HF/TRL column names (prompt/chosen/rejected)."""

    user_id: str
    prompt: str
    chosen: str
    rejected: str
    user_description: str | None = None
    # Description of a user who prefers ``rejected`` (FSPO's user-description variant).
    rejected_description: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
