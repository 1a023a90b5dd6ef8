"""Prompt-lookup drafts in the engine's greedy decoding, on the requests the DSPy peers send.

The peers' task calls are DSPy chat-adapter prompts (the peers' own signature, a user's
profile as the instruction, one OpinionQA question) answered greedily: a reply such as
"[[ ## answer ## ]]\\nB\\n\\n[[ ## completed ## ]]" copies most of its tokens from the prompt.
For each request the engine decodes it without drafts and with them, in alternating order,
each run from the same prompt-cache state: cleared (the whole prompt pass counts), or with
``--shared-prefix`` holding the previous request (the same user's system message is reused, as
in a peer's fit). Prints seconds per request, forward passes, the paired ratio, and how many
replies are identical.

    python benchmarks/lookup_decoding.py --users 3 --questions 4 --threads 1 [--shared-prefix]
"""

from __future__ import annotations

import argparse
import statistics
import time

from personalign.bench.runner import split_user
from personalign.methods.peers import DSPY_VERSION, _dspy, _signature
from personalign.runtime.data.opinionqa import load_opinionqa, profile_text
from personalign.runtime.llm.factory import load_llm
from personalign.runtime.llm.types import SamplingParams
from personalign.runtime.prompts import choices_text, profile_prompt
from personalign.runtime.settings import configure_threads


def requests(data: str, users: int, questions: int) -> list[list[dict]]:
    """DSPy's chat-adapter messages for each user's first test questions."""
    dspy = _dspy()
    adapter = dspy.ChatAdapter()
    out = []
    for user in [u for u in load_opinionqa(data) if len(u.opinions) >= 50][:users]:
        split = split_user(user)
        signature = _signature(dspy, profile_prompt(profile_text(user.profile)))
        for q in split.test[:questions]:
            out.append(adapter.format(signature, [], {"question": q.question,
                                                      "choices": choices_text(q.options)}))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="../shared/data/opinionqa/dev.jsonl")
    ap.add_argument("--model", default="qwen2.5-coder-1.5b-instruct")
    ap.add_argument("--users", type=int, default=3)
    ap.add_argument("--questions", type=int, default=4)
    ap.add_argument("--draft", type=int, default=8, help="lookup tokens per pass")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--shared-prefix", action="store_true",
                    help="start each run with the previous request's prompt cached")
    args = ap.parse_args()
    configure_threads(args.threads)
    prompts = requests(args.data, args.users, args.questions)
    llm = load_llm(args.model, cache=False)
    params = SamplingParams(max_tokens=args.max_tokens)
    llm.generate([prompts[0]], params)  # warm-up
    rows = []
    for i, prompt in enumerate(prompts):
        runs = {}
        for k in ((0, args.draft) if i % 2 == 0 else (args.draft, 0)):
            llm.prompt_cache.clear()
            if args.shared_prefix and i > 0:  # the previous request's prompt pass
                llm._generate([prompts[i - 1]], SamplingParams(max_tokens=1))
            llm.lookup_tokens, llm.forward_passes = k, 0
            start = time.perf_counter()
            (gen,) = llm._generate([prompt], params)
            runs[k] = (time.perf_counter() - start, llm.forward_passes, gen)
        (plain_s, plain_p, plain), (draft_s, draft_p, drafted) = runs[0], runs[args.draft]
        rows.append((plain_s, draft_s, plain_p, draft_p, plain.completion_tokens,
                     plain.prompt_tokens, plain.texts == drafted.texts))
        print(f"request {i + 1}/{len(prompts)}: {plain.prompt_tokens} prompt tokens, "
              f"{plain.completion_tokens} generated; plain {plain_s:.2f} s / {plain_p} passes, "
              f"drafts {draft_s:.2f} s / {draft_p} passes; same text: "
              f"{plain.texts == drafted.texts}; {plain.texts[0]!r}", flush=True)
    plain_s, draft_s, plain_p, draft_p, gen, prompt_tokens, same = zip(*rows)
    state = "previous request's prompt cached" if args.shared_prefix else "prompt cache cleared"
    print(f"\n{args.model} on the engine ({llm.dtype}), {args.threads} thread(s), {state}, DSPy "
          f"{DSPY_VERSION} chat-adapter requests: {len(rows)}, median "
          f"{statistics.median(prompt_tokens):.0f} prompt tokens, "
          f"{statistics.median(gen):.0f} generated")
    print(f"seconds per request, median: plain {statistics.median(plain_s):.2f}, with drafts "
          f"{statistics.median(draft_s):.2f}; paired ratio plain/drafts: median "
          f"{statistics.median(p / d for p, d in zip(plain_s, draft_s)):.2f}, "
          f"total {sum(plain_s) / sum(draft_s):.2f}")
    print(f"forward passes after the prompt: plain {sum(plain_p)}, with drafts {sum(draft_p)}")
    print(f"identical replies: {sum(same)}/{len(same)}")


if __name__ == "__main__":
    main()
