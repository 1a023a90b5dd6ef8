"""FSPO choice scoring: the runtime engine against the training-side scoring path, side by side.

Both score every option of every test question of the same users, with the same FSPO model,
the same 8 shots and the same prompts:

- ``training path``: what FSPO evaluation ran before it moved onto the engine. The PEFT model
  (adapters not merged), one prompt pass per question (the user's shots reused across questions
  through ``PromptCache``), options continued from the prompt's KV cache
  (``fspo.train.scoring.completion_logps``).
- ``engine``: the ``fspo`` method through the runtime (``TransformersLLM`` with the adapters
  merged, the shots as the shared prefix, packed weights, padding-bounded batches).

Prints the largest difference of normalized option log-probs, how many choices agree, and
seconds for each path with the speed-up, measured in one run.

    python benchmarks/fspo_scoring_bench.py --model runs/fspo_opinionqa_long/final --users 4
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def load_training_path(model_spec: str):
    """The PEFT model as FSPO evaluation loaded it: adapters before the last merged, the last
    one live; and its tokenizer."""
    from peft import PeftModel

    from personalign.fspo.train.model import load_base, model_files

    base, adapters = model_files(model_spec)
    lm, tok = load_base(base)
    for i, adapter in enumerate(adapters):
        lm = PeftModel.from_pretrained(lm, adapter)
        if i < len(adapters) - 1:
            lm = lm.merge_and_unload()
    return lm.eval(), tok


def training_path_logps(lm, tok, method, questions) -> tuple[list[np.ndarray], float]:
    import torch

    from personalign.fspo.data.opinionqa_prefs import opinion_prompt
    from personalign.fspo.personalizer import RESPONSE_HEADER
    from personalign.fspo.train.scoring import completion_logps, encode
    from personalign.runtime.llm.prompt_cache import PromptCache

    cache = PromptCache()
    out = []
    start = time.perf_counter()
    with torch.no_grad():
        for q in questions:
            completions = [f"{RESPONSE_HEADER}{o}\n" for o in q.options]
            example = encode(tok, method.prompt(opinion_prompt(q)), completions,
                             max_prompt_tokens=2048, max_completion_tokens=256)
            logps, _ = completion_logps(lm, example, tok.pad_token_id, cache, "policy")
            x = logps.double().numpy()
            out.append(x - np.logaddexp.reduce(x))
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="FSPO model or run folder, or 'base'.")
    ap.add_argument("--data", default="../shared/data/opinionqa/dev.jsonl")
    ap.add_argument("--users", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2, help="Alternating passes per user.")
    ap.add_argument("--out", type=Path, default=None, help="Write the numbers as JSON.")
    args = ap.parse_args()

    from personalign.bench.runner import split_user
    from personalign.fspo.personalizer import FSPO
    from personalign.runtime.data.opinionqa import load_opinionqa
    from personalign.runtime.personalizer import SharedModels
    from personalign.runtime.settings import configure_threads

    configure_threads(args.threads)
    import os

    os.environ["PERSONALIGN_NO_CACHE"] = "1"  # time the work, not the call cache
    splits = [s for s in (split_user(u) for u in load_opinionqa(args.data)) if s][: args.users]
    models = SharedModels()
    engine_s, train_s, diffs, agree, n = 0.0, 0.0, [], 0, 0
    method = FSPO(models, args.model)
    method.llm  # load both before timing
    lm, tok = load_training_path(args.model)
    for split in splits:
        method.fit(split.train)
        questions = list(split.test)
        # Alternate the two paths and keep each one's fastest pass: the machine is shared.
        engine, training = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            answers = method.predict(questions)
            engine.append(time.perf_counter() - start)
            reference, seconds = training_path_logps(lm, tok, method, questions)
            training.append(seconds)
        engine_s, train_s = engine_s + min(engine), train_s + min(training)
        for a, ref in zip(answers, reference):
            diffs.append(float(np.max(np.abs(np.asarray(a.logprobs) - ref))))
            agree += int(a.choice == int(np.argmax(ref)))
            n += 1
    result = {"model": args.model, "users": len(splits), "questions": n,
              "threads": args.threads, "repeats": args.repeats, "max_abs_logprob_diff": max(diffs),
              "choices_agree": agree, "training_path_s": round(train_s, 2),
              "engine_s": round(engine_s, 2), "speedup": round(train_s / engine_s, 2)}
    print(f"{n} questions of {len(splits)} users, {args.threads} thread(s), model {args.model}, "
          f"fastest of {args.repeats} alternating passes")
    print(f"max |normalized log-prob difference| {max(diffs):.2e}; choices agree {agree}/{n}")
    print(f"training path {train_s:.1f} s, engine {engine_s:.1f} s: "
          f"engine {train_s / engine_s:.2f}x faster")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
