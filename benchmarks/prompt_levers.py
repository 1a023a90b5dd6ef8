"""Two cheap levers that might let Gemma 3 270M's answers follow a prompt, checked on dev users.

    PERSONALIGN_THREADS=1 python benchmarks/prompt_levers.py \
        --data ../shared/data/opinionqa/dev.jsonl --users 8

1. Placement: the profile prompt before the question (as every method places its prompt)
   against the same prompt between the answer choices and "Answer:", where a base model's
   next token might heed it more (``--placement-scoring``, letter by default).
2. Shot format under a text scoring mode (``--shots-scoring``, text-mean by default): few-shot
   examples answered with the letter (as the methods show them) against answered with the
   option's text, the form a text mode scores.

Per dev user the protocol split (first 20 opinions are the shots, the next 30 the test
questions; users with fewer than 25 opinions are skipped). Prints accuracy per variant, the
share of answers that differ from vanilla, the share of "A", and paired differences over
users with bootstrap CIs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from personalign.runtime.prompts import (
    TASK_INSTRUCTION, choice_item, fewshot_items, profile_prompt, question_block,
)
from personalign.runtime.data.opinionqa import load_opinionqa, profile_text
from personalign.runtime.data.splits import protocol_order
from personalign.runtime.embeddings import Embedder
from personalign.runtime.llm.transformers_backend import TransformersLLM
from personalign.runtime.llm.types import ChoiceItem
from personalign.runtime.metrics import mean_ci, paired_bootstrap_ci

N_SHOTS, N_TEST, MIN_OPINIONS, FEWSHOT_K = 20, 30, 25, 3


def prompt_after_options(prompt: str, q) -> ChoiceItem:
    head = question_block(q.question, q.options).removesuffix("Answer:")
    return ChoiceItem(prompt=f"{head}{prompt}\nAnswer:", options=tuple(q.options))


def answered_with_text(q) -> str:
    """A past opinion answered with its option's text (the methods show the letter)."""
    return f"{question_block(q.question, q.options)} {q.options[q.answer]}"


def run_user(llm, embedder, user, placement_mode: str, shots_mode: str) -> dict:
    ops = protocol_order(user, 0)
    shots, test = ops[:N_SHOTS], ops[N_SHOTS:N_SHOTS + N_TEST]
    profile = profile_prompt(profile_text(user.profile))

    def plain(prompt):
        return [choice_item(prompt, q) for q in test]

    fewshot = {"letter": fewshot_items(shots, test, k=FEWSHOT_K, embedder=embedder),
               "text": fewshot_items(shots, test, k=FEWSHOT_K, embedder=embedder,
                                     shown_as=answered_with_text)}
    variants = {  # name -> (scoring mode, items)
        "vanilla": (placement_mode, plain(TASK_INSTRUCTION)),
        "profile before the question": (placement_mode, plain(profile)),
        "profile after the options": (placement_mode,
                                      [prompt_after_options(profile, q) for q in test]),
        f"vanilla ({shots_mode})": (shots_mode, plain(TASK_INSTRUCTION)),
        f"few-shot, letter answers ({shots_mode})": (shots_mode, fewshot["letter"]),
        f"few-shot, text answers ({shots_mode})": (shots_mode, fewshot["text"]),
    }
    preds = {name: (mode, [r.choice for r in llm.score_choices(items, method=mode)])
             for name, (mode, items) in variants.items()}
    gold = [q.answer for q in test]
    vanilla = {mode: preds[name][1] for name, mode in
               (("vanilla", placement_mode), (f"vanilla ({shots_mode})", shots_mode))}
    return {name: {"accuracy": float(np.mean([p == g for p, g in zip(ps, gold)])),
                   "differs": float(np.mean([p != v for p, v in zip(ps, vanilla[mode])])),
                   "share_a": float(np.mean([p == 0 for p in ps]))}
            for name, (mode, ps) in preds.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="../shared/data/opinionqa/dev.jsonl")
    ap.add_argument("--users", type=int, default=8)
    ap.add_argument("--placement-scoring", default="letter")
    ap.add_argument("--shots-scoring", default="text-mean")
    args = ap.parse_args()
    if "holdout" in Path(args.data).name:
        raise SystemExit("levers are checked on dev data; holdout is for acceptance only")
    users = [u for u in load_opinionqa(args.data) if len(u.opinions) >= MIN_OPINIONS][:args.users]
    llm, embedder = TransformersLLM("gemma3-270m", cache=False), Embedder()
    records = []
    for i, user in enumerate(users):
        records.append(run_user(llm, embedder, user, args.placement_scoring, args.shots_scoring))
        print(f"user {i + 1}/{len(users)} {user.user_id} done", flush=True)

    def pct(ci):
        return f"{100 * ci[0]:.1f} [{100 * ci[1]:.1f}, {100 * ci[2]:.1f}]"

    print(f"\n{len(users)} dev users x {N_TEST} test questions (Gemma 3 270M)\n")
    print("| variant | accuracy % | differs from vanilla (same scoring) % | answers 'A' % |")
    print("|---|---|---|---|")
    for name in records[0]:
        col = {k: [r[name][k] for r in records] for k in ("accuracy", "differs", "share_a")}
        print(f"| {name} | {pct(mean_ci(col['accuracy']))} | {pct(mean_ci(col['differs']))} "
              f"| {pct(mean_ci(col['share_a']))} |")
    shots = args.shots_scoring
    for a, b in (("profile after the options", "profile before the question"),
                 ("profile after the options", "vanilla"),
                 (f"few-shot, text answers ({shots})", f"few-shot, letter answers ({shots})"),
                 (f"few-shot, letter answers ({shots})", f"vanilla ({shots})")):
        diff = paired_bootstrap_ci([r[a]["accuracy"] for r in records],
                                   [r[b]["accuracy"] for r in records])
        print(f"{a} - {b}: {100 * diff[0]:+.1f} [{100 * diff[1]:+.1f}, {100 * diff[2]:+.1f}]")


if __name__ == "__main__":
    main()
