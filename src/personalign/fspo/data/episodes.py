"""Few-shot episodes: group pairs by user, windows of N shots + 1 query, augmentation passes.

An episode record is TRL-ready (``prompt``/``chosen``/``rejected``) and carries ``user_id`` and
``n_shots`` (the number of shots actually in the prompt, after truncation) plus ``meta``.
Serialization: :mod:`personalign.fspo.data.serialization` (completions carry no EOS; the
trainer's tokenizer appends it).
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from personalign.fspo.data.serialization import (
    Shot,
    check_variant,
    describe_first,
    serialize_completions,
    serialize_prompt,
)
from personalign.runtime.data.records import PreferencePair
from personalign.runtime.data.splits import derive_seed
from personalign.runtime.errors import ConfigError, DataError
from personalign.runtime.storage import atomic_write

log = logging.getLogger(__name__)

TokenCounter = Callable[[str], int]


def approx_tokens(text: str) -> int:
    """Rough token count (4 characters a token), used when no tokenizer is given."""
    return max(1, len(text) // 4)


@dataclass
class Episode:
    """One training/eval record: N shots of one user + that user's query pair."""

    prompt: str
    chosen: str
    rejected: str
    user_id: str
    n_shots: int
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _shot(p: PreferencePair) -> Shot:
    return Shot(p.prompt.strip(), p.chosen.strip(), p.rejected.strip())


def make_episode(shots: Sequence[PreferencePair], query: PreferencePair,
                 variant: str = "default", max_prompt_tokens: int | None = None,
                 count_tokens: TokenCounter | None = None,
                 meta: dict[str, Any] | None = None) -> Episode:
    """Serialize one episode; over ``max_prompt_tokens`` the OLDEST shots (Example 1 first) are
    dropped until it fits. The final question is never cut: with no shots left the prompt is
    kept whole (and flagged in meta) even if still over budget."""
    check_variant(variant)
    count = count_tokens or approx_tokens
    shots = list(shots)
    description = query.user_description

    def render(kept: list[PreferencePair]) -> str:
        return serialize_prompt([_shot(s) for s in kept], query.prompt.strip(), variant,
                                user_description=description)

    prompt = render(shots)
    dropped = 0
    if max_prompt_tokens is not None:
        while shots and count(prompt) > max_prompt_tokens:
            shots.pop(0)
            dropped += 1
            prompt = render(shots)
    chosen, rejected = serialize_completions(query.chosen.strip(), query.rejected.strip(),
                                             variant, user_description=description,
                                             rejected_description=query.rejected_description)
    info = dict(meta or {})
    info.update(variant=variant, truncated_shots=dropped,
                query_meta=query.meta or {})
    if max_prompt_tokens is not None and count(prompt) > max_prompt_tokens:
        info["over_budget"] = True
        log.warning("episode of %s: question alone exceeds %d tokens; kept whole",
                    query.user_id, max_prompt_tokens)
    return Episode(prompt, chosen, rejected, query.user_id, len(shots), info)


def query_options(record: dict[str, Any]) -> tuple[list[str], int, str | None] | None:
    """(options, index of the person's answer, question id) of an episode whose query came
    from a multiple-choice question (its meta says so), else None."""
    meta = record.get("meta") or {}
    q = meta.get("query_meta") or meta
    if isinstance(q, dict) and q.get("options") and q.get("answer") is not None:
        return [str(o) for o in q["options"]], int(q["answer"]), q.get("qid")
    return None


def lacking_rejected_description(pairs: Iterable[PreferencePair]) -> int:
    """Pairs the user-description variant cannot serialize: no description on the rejected
    side that differs from the user's own."""
    return sum(1 for p in pairs if not p.rejected_description
               or p.rejected_description == p.user_description)


def group_by_user(pairs: Iterable[PreferencePair]) -> dict[str, list[PreferencePair]]:
    groups: dict[str, list[PreferencePair]] = defaultdict(list)
    for p in pairs:
        groups[p.user_id].append(p)
    return dict(sorted(groups.items()))


def build_episodes(pairs: Sequence[PreferencePair], n_shots: int, passes: int | None = None,
                   seed: int = 0, variant: str = "default",
                   max_prompt_tokens: int | None = None,
                   count_tokens: TokenCounter | None = None) -> list[Episode]:
    """Episodes of every user: each pass shuffles the user's pairs afresh (seeded by seed, user,
    pass) and cuts them into consecutive windows of ``n_shots + 1`` (the last is the query);
    a trailing partial window is left out. ``passes`` defaults to FSPO's 2 (N + 1).
    Users with fewer than N + 1 pairs give no episodes (logged)."""
    check_variant(variant)
    if n_shots < 0:
        raise ConfigError(f"n_shots must be >= 0, got {n_shots}")
    passes = 2 * (n_shots + 1) if passes is None else passes
    if passes < 1:
        raise ConfigError(f"passes must be >= 1, got {passes}")
    window = n_shots + 1
    episodes: list[Episode] = []
    too_few = []
    for user_id, rows in group_by_user(pairs).items():
        if len(rows) < window:
            too_few.append(user_id)
            continue
        for p in range(passes):
            order = list(range(len(rows)))
            random.Random(derive_seed(seed, user_id, p)).shuffle(order)
            for w, start in enumerate(range(0, len(order) - window + 1, window)):
                idx = order[start:start + window]
                episodes.append(make_episode(
                    [rows[i] for i in idx[:-1]], rows[idx[-1]], variant, max_prompt_tokens,
                    count_tokens, meta={"pass": p, "window": w, "rows": idx}))
    if too_few:
        log.warning("%d users have fewer than %d pairs and give no episodes: %s", len(too_few),
                    window, ", ".join(too_few[:10]))
    return episodes


def select_shots(pool: Sequence[PreferencePair], n_shots: int, seed: int,
                 user_id: str) -> list[PreferencePair]:
    """The N shots a test user shows the model: a seeded draw (per user) from their pool."""
    pool = list(pool)
    random.Random(derive_seed(seed, user_id, "eval")).shuffle(pool)
    if len(pool) < n_shots:
        log.warning("user %s has %d shots for N=%d", user_id, len(pool), n_shots)
    return pool[:n_shots]


def build_eval_episodes(shot_pairs: Sequence[PreferencePair], query_pairs: Sequence[PreferencePair],
                        n_shots: int, seed: int = 0, variant: str = "default",
                        max_prompt_tokens: int | None = None,
                        count_tokens: TokenCounter | None = None) -> list[Episode]:
    """Evaluation episodes: for every query pair of a user, N shots drawn (seeded, per user) from
    that user's shot pool, e.g. U_opi in protocol opinionqa-preferences. The same N shots serve
    all of the user's queries, as a deployed model sees one fixed context per user."""
    shots_by_user = group_by_user(shot_pairs)
    episodes = []
    for user_id, queries in group_by_user(query_pairs).items():
        shots = select_shots(shots_by_user.get(user_id, []), n_shots, seed, user_id)
        for q, query in enumerate(queries):
            episodes.append(make_episode(shots, query, variant, max_prompt_tokens, count_tokens,
                                         meta={"query": q, "eval": True}))
    return episodes


def split_users(user_ids: Iterable[str], test_fraction: float = 0.2, seed: int = 0,
                test_users: Iterable[str] | None = None) -> tuple[list[str], list[str]]:
    """(train, test) user ids, disjoint; seeded, independent of the input order. Explicit
    ``test_users`` override the fraction. With two or more users both sides are non-empty."""
    ids = sorted(set(user_ids))
    if test_users is not None:
        test = set(test_users)
        unknown = test - set(ids)
        if unknown:
            raise ConfigError(f"test users not in the data: {', '.join(sorted(unknown)[:5])}")
        return [u for u in ids if u not in test], sorted(test)
    if not 0.0 <= test_fraction < 1.0:
        raise ConfigError(f"test fraction must be in [0, 1), got {test_fraction}")
    order = sorted(ids, key=lambda u: derive_seed(seed, "split", u))
    n_test = round(len(ids) * test_fraction)
    if test_fraction > 0 and len(ids) >= 2:
        n_test = min(max(n_test, 1), len(ids) - 1)
    test = set(order[:n_test])
    return [u for u in ids if u not in test], sorted(test)


def split_pairs(pairs: Sequence[PreferencePair], test_fraction: float = 0.2, seed: int = 0,
                test_users: Iterable[str] | None = None
                ) -> tuple[list[PreferencePair], list[PreferencePair]]:
    train_ids, _ = split_users([p.user_id for p in pairs], test_fraction, seed, test_users)
    keep = set(train_ids)
    return [p for p in pairs if p.user_id in keep], [p for p in pairs if p.user_id not in keep]


# ---------------------------------------------------------------------- files
def write_jsonl(rows: Iterable[dict], path: str | Path) -> Path:
    """JSONL written to a temp file and renamed (nothing half-written)."""
    path = Path(path)

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")

    atomic_write(path, write)
    return path


def write_records(records: Sequence[Episode | PreferencePair | dict], path: str | Path) -> Path:
    """Rows as JSONL (``.jsonl``) or parquet (``.parquet``; meta stored as a JSON string)."""
    path = Path(path)
    rows = [r if isinstance(r, dict) else r.to_dict() for r in records]
    if path.suffix == ".parquet":
        import pandas as pd

        frame = pd.DataFrame([{**r, "meta": json.dumps(r.get("meta", {}), ensure_ascii=False)}
                              for r in rows])
        atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))
        return path
    return write_jsonl(rows, path)


def episode_stats(episodes: Sequence[Episode]) -> dict[str, Any]:
    shots = [e.n_shots for e in episodes]
    return {"episodes": len(episodes), "users": len({e.user_id for e in episodes}),
            "mean_shots": round(sum(shots) / len(shots), 3) if shots else math.nan,
            "truncated": sum(1 for e in episodes if e.meta.get("truncated_shots"))}


# ---------------------------------------------------------------------- prompt modes
#: how an evaluation asks an episode: as built (few-shot), without its shots (pooled
#: training's baseline), with the user's description first (oracle), or asked to write the
#: user's description before answering (rat: FSPO's predicted description,
#: :mod:`personalign.fspo.description`)
PROMPT_MODES = ("as-is", "zero-shot", "oracle", "rat")
QUESTION_MARK = "## Question\n"


def final_question(prompt: str) -> str:
    """The episode's query question: the text after the last "## Question" header."""
    at = prompt.rfind(QUESTION_MARK)
    if at < 0:
        raise DataError("episode prompt has no '## Question' section", field="prompt")
    return prompt[at + len(QUESTION_MARK):].strip()


def transform_prompt(record: dict[str, Any], mode: str,
                     descriptions: dict[str, str] | None = None) -> str:
    prompt = record["prompt"]
    if mode == "as-is":
        return prompt
    if mode == "zero-shot":
        return serialize_prompt([], final_question(prompt))
    if mode == "oracle":
        description = (descriptions or {}).get(record["user_id"])
        if not description:
            raise DataError(f"no description for user {record['user_id']!r} (oracle mode)",
                            field="user_id")
        return f"# User Description\n{description}\n\n{prompt}"
    if mode == "rat":
        return describe_first(prompt)
    raise ConfigError(f"unknown prompt mode {mode!r}; known: {', '.join(PROMPT_MODES)}")


def zero_shot_records(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Training records for the pooled baseline: the same pairs without shots."""
    return [{**r, "prompt": transform_prompt(r, "zero-shot"), "n_shots": 0} for r in records]


def leave_one_out_episodes(pairs: Sequence[PreferencePair], n_shots: int,
                           seed: int = 0) -> list[dict]:
    """Evaluation episodes for users with few pairs: each pair of a user is the query once,
    with up to ``n_shots`` of that user's OTHER pairs (seeded shuffle) as shots."""
    out = []
    for user_id, rows in group_by_user(pairs).items():
        for q, query in enumerate(rows):
            others = [p for i, p in enumerate(rows) if i != q]
            random.Random(derive_seed(seed, user_id, q)).shuffle(others)
            episode = make_episode(others[:n_shots], query,
                                   meta={"query": q, "eval": True, "leave_one_out": True})
            out.append(episode.to_dict())
    return out
