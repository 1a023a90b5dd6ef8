"""Data card of a synthetic preference dataset folder (see :mod:`pipeline` for its files).

Numbers: users; pairs judged and kept per user; order-inconsistent (dropped) pairs before and
after refinement; mean label entropy (nats) before and after refinement; diversity = mean
pairwise cosine similarity of the candidate responses to the same question (MiniLM embeddings;
lower = more diverse), averaged over questions; for ELIX, how often the kept label picks the
response written for the user's own level when one of the two was ("level agreement"); LLM usage
and wall time.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from personalign.fspo.data.judge import binary_entropy
from personalign.runtime.data.validate import read_jsonl
from personalign.runtime.errors import DataError
from personalign.runtime.storage import atomic_write_json, atomic_write_text


def _mean(xs) -> float | None:
    xs = list(xs)
    return round(float(statistics.fmean(xs)), 4) if xs else None


def response_diversity(responses_by_question: dict[str, list[str]], embedder=None
                       ) -> dict[str, Any]:
    """Mean pairwise cosine similarity of the responses of each question, averaged."""
    if embedder is None:
        from personalign.runtime.embeddings import Embedder

        embedder = Embedder()
    sims = []
    for texts in responses_by_question.values():
        if len(texts) < 2:
            continue
        e = embedder.embed(texts)
        s = e @ e.T
        iu = np.triu_indices(len(texts), k=1)
        sims.append(float(s[iu].mean()))
    return {"mean_pairwise_similarity": _mean(sims), "questions": len(sims),
            "embedder": getattr(embedder, "model_name", type(embedder).__name__)}


def _summed_usage(runs: list[dict]) -> dict[str, dict[str, float]]:
    """Per model spec: the numeric usage counts (calls, tokens, seconds, ...) summed over
    resumed runs."""
    total: dict[str, dict[str, float]] = {}
    for run in runs:
        for spec, u in run.get("usage", {}).items():
            t = total.setdefault(spec, {})
            for key, value in u.items():
                if isinstance(value, (int, float)):
                    t[key] = t.get(key, 0) + value
    return total


def data_card(folder: str | Path, embedder=None) -> dict[str, Any]:
    folder = Path(folder)
    needed = ["pairs_all.jsonl", "pairs.jsonl", "responses.jsonl", "users.jsonl"]
    for name in needed:
        if not (folder / name).exists():
            raise DataError(f"not a finished synthetic dataset folder ({name} missing)",
                            path=str(folder))
    rows = [o for _, o in read_jsonl(folder / "pairs_all.jsonl")]
    kept = [o for _, o in read_jsonl(folder / "pairs.jsonl")]
    users = [o for _, o in read_jsonl(folder / "users.jsonl")]
    config = json.loads((folder / "config.json").read_text()) \
        if (folder / "config.json").exists() else {}
    responses = {o["qid"]: [r["text"] for r in o["responses"]]
                 for _, o in read_jsonl(folder / "responses.jsonl")}
    per_user_kept = Counter(p["user_id"] for p in kept)
    per_user_all = Counter(r["user_id"] for r in rows)
    counts = [per_user_kept.get(u["user_id"], 0) for u in users]
    traits = {}
    for path in sorted((folder / "labels").glob("*.json")):
        rec = json.loads(path.read_text())
        traits[rec["user_id"]] = rec.get("traits", [])
    # ELIX: pairs where exactly one response was written for the user's level.
    easy = [r for r in rows if r.get("level") and (r.get("level_x") == r["level"])
            != (r.get("level_y") == r["level"])]

    def agreement(key: str) -> float | None:
        hits = [(r[key] == 0) == (r["level_x"] == r["level"]) for r in easy
                if r[key] is not None]
        return _mean(hits)

    card = {
        "folder": str(folder),
        "domain": config.get("domain"),
        "generators": config.get("generators"), "temperatures": config.get("temperatures"),
        "judge": {k: config.get(k) for k in ("judge_model", "judge_method", "consistency")},
        "users": len(users),
        "questions": len(responses),
        "responses": sum(len(v) for v in responses.values()),
        "pairs_judged": len(rows),
        "pairs_kept": len(kept),
        "pairs_per_user": {"mean": _mean(counts), "min": min(counts) if counts else 0,
                           "max": max(counts) if counts else 0,
                           "judged_per_user": _mean(per_user_all.values())},
        "dropped_order_inconsistent": {
            "before_refinement": sum(r["label_before"] is None for r in rows),
            "after_refinement": sum(r["label"] is None for r in rows)},
        "label_entropy_nats": {
            "before_refinement": _mean(binary_entropy(r["p_x_before"]) for r in rows),
            "after_refinement": _mean(binary_entropy(r["p_x_after"]) for r in rows)},
        "refinement": {"users_refined": sum(1 for t in traits.values() if t),
                       "traits_added": sum(len(t) for t in traits.values())},
        "diversity": response_diversity(responses, embedder),
    }
    if easy:
        card["elix_level_agreement"] = {"easy_pairs": len(easy),
                                        "before_refinement": agreement("label_before"),
                                        "after_refinement": agreement("label")}
    if (folder / "usage.json").exists():
        usage = json.loads((folder / "usage.json").read_text())
        card["wall_s"] = usage.get("wall_s_total")
        card["llm_usage"] = _summed_usage(usage.get("runs", []))
        card["llm_calls_total"] = usage.get("llm_calls_total")
    if (folder / "budget.json").exists():
        card["budget_planned"] = json.loads((folder / "budget.json").read_text())
    return card


def card_markdown(card: dict[str, Any]) -> str:
    lines = [f"# Data card: {card['folder']}", ""]
    simple = ["domain", "users", "questions", "responses", "pairs_judged", "pairs_kept",
              "wall_s", "llm_calls_total"]
    for key in simple:
        if key in card:
            lines.append(f"- **{key}**: {card[key]}")
    for key in ["generators", "temperatures", "judge", "pairs_per_user",
                "dropped_order_inconsistent", "label_entropy_nats", "refinement", "diversity",
                "elix_level_agreement", "budget_planned"]:
        if key in card:
            lines.append(f"- **{key}**: `{json.dumps(card[key])}`")
    return "\n".join(lines) + "\n"


def write_card(folder: str | Path, embedder=None) -> dict[str, Any]:
    folder = Path(folder)
    card = data_card(folder, embedder)
    atomic_write_json(folder / "card.json", card)
    atomic_write_text(folder / "card.md", card_markdown(card))
    return card
