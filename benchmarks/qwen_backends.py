"""Qwen2.5-Coder 1.5B Instruct on 2 cores: the transformers engine against llama.cpp, side by side.

Both score the same OpinionQA items through the model's chat template (the choice read from
the assistant turn's first token): each user's test questions behind that user's profile
prompt (the shared prefix: the engine's prefix KV cache, llama.cpp's kept KV cache), and
both decode the same optimizer-style request. No call cache. Prints seconds per scored item
(prefix cached after each user's first question), prompt tokens/s, decode tokens/s, load
time and how many choices each engine dtype shares with llama.cpp.

    python benchmarks/qwen_backends.py --users 4 --questions 10 --threads 2
"""

from __future__ import annotations

import argparse
import time

from personalign.bench.runner import split_user
from personalign.runtime.prompts import choice_item, profile_prompt
from personalign.runtime.data.opinionqa import load_opinionqa, profile_text
from personalign.runtime.llm.factory import load_llm
from personalign.runtime.llm.types import SamplingParams

REQUEST = [{"role": "user", "content": (
    "Write a one-paragraph instruction that tells an assistant to answer survey questions "
    "the way a 45-year-old conservative farmer from Ohio would. Reply with the instruction "
    "only.")}]


def measure(spec: str, options: dict, items, decode_tokens: int) -> dict:
    start = time.perf_counter()
    llm = load_llm(spec, cache=False, **options)
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    results = llm.score_choices(items)
    score_s = time.perf_counter() - start
    tokens = llm.usage.prompt_tokens
    params = SamplingParams(max_tokens=decode_tokens, ignore_eos=True)
    llm.generate([REQUEST], params)  # warm: the request's prompt pass
    start = time.perf_counter()
    gen = llm._generate([REQUEST], params)[0]
    decode_s = time.perf_counter() - start
    del llm
    return {"load_s": load_s, "s_per_item": score_s / len(items),
            "prompt_tok_s": tokens / score_s, "decode_tok_s": gen.completion_tokens / decode_s,
            "choices": [r.choice for r in results]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/opinionqa/dev.jsonl")
    ap.add_argument("--model", default="qwen2.5-coder-1.5b-instruct")
    ap.add_argument("--users", type=int, default=4)
    ap.add_argument("--questions", type=int, default=10, help="test questions per user")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtypes", default="float32,bfloat16", help="engine dtypes")
    ap.add_argument("--decode-tokens", type=int, default=48)
    args = ap.parse_args()

    items = []
    for user in load_opinionqa(args.data)[: args.users]:
        split = split_user(user)
        prompt = profile_prompt(profile_text(user.profile))
        items += [choice_item(prompt, q) for q in split.test[: args.questions]]
    runs = {"llama.cpp Q4_K_M": measure(f"llamacpp:{args.model}", {"threads": args.threads},
                                        items, args.decode_tokens)}
    for dtype in args.dtypes.split(","):
        runs[f"engine {dtype}"] = measure(f"transformers:{args.model}",
                                          {"threads": args.threads, "dtype": dtype},
                                          items, args.decode_tokens)
    reference = runs["llama.cpp Q4_K_M"]["choices"]
    print(f"{len(items)} items ({args.users} users x {args.questions} questions, profile "
          f"prompt as prefix), {args.threads} threads, model {args.model}")
    print(f"{'backend':<20} {'load s':>7} {'s/item':>7} {'prompt tok/s':>13} "
          f"{'decode tok/s':>13} {'agree w/ llama.cpp':>19}")
    for name, run in runs.items():
        agree = sum(a == b for a, b in zip(run["choices"], reference)) / len(items)
        print(f"{name:<20} {run['load_s']:>7.1f} {run['s_per_item']:>7.2f} "
              f"{run['prompt_tok_s']:>13.1f} {run['decode_tok_s']:>13.1f} {agree:>18.1%}")
    base = runs["llama.cpp Q4_K_M"]
    for name, run in runs.items():
        if name != "llama.cpp Q4_K_M":
            print(f"{name} / llama.cpp: scoring time x{run['s_per_item'] / base['s_per_item']:.2f}"
                  f", decode speed x{run['decode_tok_s'] / base['decode_tok_s']:.2f}")


if __name__ == "__main__":
    main()
