"""Fermi's memory: the top-L (prompt, score, mis-aligned set) triplets over all iterations."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable


@dataclass(frozen=True)
class Candidate:
    """A scored prompt. ``misaligned`` holds 0-based indices into the optimization questions;
    ``predictions`` the task model's answer for each of them (for failure cases);
    ``evidence`` the optimization questions shown with the person's answers after the prompt
    (``FermiConfig.evidence_per_prompt``; the optimizer sees ``prompt`` alone)."""

    prompt: str
    score: float
    misaligned: tuple[int, ...] = ()
    predictions: tuple[Any, ...] = ()
    iteration: int = 0
    evidence: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "score": self.score, "misaligned": list(self.misaligned),
                "predictions": list(self.predictions), "iteration": self.iteration,
                "evidence": list(self.evidence)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Candidate":
        return cls(prompt=d["prompt"], score=d["score"], misaligned=tuple(d["misaligned"]),
                   predictions=tuple(d["predictions"]), iteration=d.get("iteration", 0),
                   evidence=tuple(d.get("evidence", ())))


@dataclass
class Memory:
    """Keeps the ``size`` best candidates; on equal scores the one seen first ranks higher."""

    size: int
    _entries: list[tuple[int, Candidate]] = field(default_factory=list)
    _seen: int = 0

    def add(self, candidate: Candidate) -> bool:
        """Insert; returns whether the candidate is in the memory afterwards."""
        order = self._seen
        self._seen += 1
        self._entries.append((order, candidate))
        self._entries.sort(key=lambda e: (-e[1].score, e[0]))
        del self._entries[self.size:]
        return any(o == order for o, _ in self._entries)

    def extend(self, candidates: Iterable[Candidate]) -> None:
        for c in candidates:
            self.add(c)

    def ranked(self) -> list[Candidate]:
        """Best first (rank l = 1 is the highest score)."""
        return [c for _, c in self._entries]

    def ascending(self) -> list[Candidate]:
        """The order the meta-prompt shows: lowest score first, best last."""
        return list(reversed(self.ranked()))

    def reference(self, which: str = "best") -> Candidate:
        ranked = self.ranked()
        if not ranked:
            raise ValueError("memory is empty")
        return ranked[0] if which == "best" else ranked[-1]

    @property
    def best_score(self) -> float:
        return self.ranked()[0].score if self._entries else float("nan")

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, prompt: str) -> bool:
        return any(c.prompt == prompt for _, c in self._entries)
