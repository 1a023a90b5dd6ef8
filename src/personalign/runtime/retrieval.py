"""Retrieval of a user's past opinions most similar to a question (embeddings or BM25): what
the few-shot baseline and Fermi's ``context_shots`` show the task model
(:func:`personalign.runtime.prompts.shown` writes them)."""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from personalign.runtime.data.records import Opinion
from personalign.runtime.errors import ConfigError


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def retrieve(shots: Sequence[Opinion], questions: Sequence[Opinion], k: int,
             retriever: str = "embeddings", embedder=None,
             leave_out_self: bool = False) -> list[list[int]]:
    """Indices of the k most similar shots for each question, most similar first.
    ``leave_out_self``: a shot equal to the question is never retrieved for it (questions
    that are themselves past opinions must not see their own answer)."""
    k = min(k, len(shots) - (1 if leave_out_self else 0))
    if k <= 0 or not questions:
        return [[] for _ in questions]
    if retriever == "embeddings":
        if embedder is None:
            raise ConfigError("few-shot retrieval by embeddings needs an embedder")
        sim = embedder.similarity([q.question for q in questions], [s.question for s in shots])
    elif retriever == "bm25":
        from rank_bm25 import BM25Okapi

        bm25 = BM25Okapi([_tokens(s.question) or [""] for s in shots])
        sim = np.array([bm25.get_scores(_tokens(q.question)) for q in questions])
    else:
        raise ConfigError(f"unknown retriever {retriever!r} (embeddings, bm25)")
    sim = np.array(np.atleast_2d(sim), dtype=float)
    if leave_out_self:
        for i, q in enumerate(questions):
            for j, s in enumerate(shots):
                if s == q:
                    sim[i, j] = -np.inf
    return [list(np.argsort(-row, kind="stable")[:k]) for row in sim]

