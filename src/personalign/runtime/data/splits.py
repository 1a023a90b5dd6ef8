"""Seeded per-user orderings shared by every protocol, so methods see the same questions."""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

import numpy as np

from personalign.runtime.data.records import Opinion, User


def derive_seed(*parts: Any) -> int:
    """A 31-bit seed from (global seed, user, iteration, ...), stable across processes
    (Python's ``hash`` is salted per process)."""
    blob = "\x1f".join(str(p) for p in parts).encode("utf-8")
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "big") & 0x7FFFFFFF


def optimization_split(opinions: Sequence[Opinion], fraction: float
                       ) -> tuple[list[Opinion], list[Opinion]]:
    """Fermi's optimization and demonstration parts of a user's opinions: the first
    ``fraction`` (at least one, and one left for demonstration), the rest; all when
    ``fraction`` is 1. The DSPy peers fit on the same parts."""
    n = len(opinions)
    n_opt = min(n - 1, max(1, round(n * fraction))) if fraction < 1.0 else n
    return list(opinions[:n_opt]), list(opinions[n_opt:])


def protocol_order(user: User, seed: int) -> list[Opinion]:
    """The user's opinions shuffled with a seed derived from (seed, user_id): the first 20
    are U_opi and the next 30 the test questions in opinionqa-individual and -preferences."""
    order = np.random.default_rng(derive_seed(seed, user.user_id)).permutation(
        len(user.opinions))
    return [user.opinions[i] for i in order]
