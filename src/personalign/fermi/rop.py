"""Retrieval-of-Prompt: answer each test question with the pool prompt that did best on the
N~ training questions most similar to it (cosine of sentence embeddings)."""

from __future__ import annotations

import numpy as np


def nearest(similarity_row: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k most similar training questions (ties: lower index first)."""
    order = np.argsort(-np.asarray(similarity_row, dtype=float), kind="stable")
    return order[:k]


def select_prompts(correctness: np.ndarray, similarity: np.ndarray, k: int = 3) -> list[int]:
    """For each test question (row of ``similarity``, shape (Q, N)), the index of the pool
    prompt (row of ``correctness``, shape (P, N), per-sample scores in [0, 1]) with the highest
    mean score on its k nearest training questions; ties go to the first prompt."""
    correctness = np.asarray(correctness, dtype=float)
    similarity = np.atleast_2d(np.asarray(similarity, dtype=float))
    if correctness.ndim != 2 or correctness.shape[1] != similarity.shape[1]:
        raise ValueError(f"shapes differ: correctness {correctness.shape}, "
                         f"similarity {similarity.shape}")
    picks = []
    for row in similarity:
        idx = nearest(row, k)
        picks.append(int(np.argmax(correctness[:, idx].mean(axis=1))))  # argmax: first max
    return picks


def best_prompt(correctness: np.ndarray) -> int:
    """Fermi without RoP: the prompt with the best mean score (ties: first)."""
    return int(np.argmax(np.asarray(correctness, dtype=float).mean(axis=1)))
