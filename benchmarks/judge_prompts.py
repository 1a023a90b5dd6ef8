"""FSPO's judge prompt, compared on pairs whose answer is known (issue 28).

    python benchmarks/judge_prompts.py                      # old and current, synthetic pairs
    python benchmarks/judge_prompts.py --variants old,current,no-guidelines \
        --opinionqa ../shared/data/opinionqa/dev.jsonl

The packaged synthetic pairs are split where they were written: the current prompt was chosen
on pairs 1-24; pairs 25-36 were written afterwards to check that choice. Each variant is one
`check_judge` run (both orders, calibration off and on; the position bias over each set).
The judge is the default (Qwen 1.5B Instruct on llama.cpp); calls go through the call cache.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from personalign.bench.preferences import judge_check_markdown
from personalign.fspo.data.judge import DEFAULT_JUDGE, JUDGE_PROMPT
from personalign.fspo.data.judge_check import (
    check_judge, opinionqa_known_pairs, synthetic_known_pairs,
)
from personalign.runtime.llm.factory import load_llm

# the prompt before issue 28's change: the description only in the shared prefix
OLD = ("This user asked:\n{question}\n\nResponse A:\n{a}\n\nResponse B:\n{b}\n\n"
       "Scoring guidelines: {guidelines}\n"
       "A longer response is not better for being longer.\n"
       "Which response would this user prefer? Answer with A or B.\nAnswer:")
VARIANTS = {
    "old": OLD,
    "current": JUDGE_PROMPT,
    "old+reminder": OLD.replace("Which response", "Remember who the user is: {description}\n"
                                                  "Which response"),
    "written-for": JUDGE_PROMPT.replace("Which response fits this user better?",
                                        "Which response was written for this user?"),
    "no-guidelines": JUDGE_PROMPT.replace("Scoring guidelines: {guidelines}\n", ""),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default="old,current",
                    help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--judge", default=DEFAULT_JUDGE)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--opinionqa", default=None,
                    help="an OpinionQA file: also its known pairs (8 users x 5)")
    args = ap.parse_args()
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    synthetic = synthetic_known_pairs()
    pairs = [dataclasses.replace(p, source="synthetic 1-24" if i < 24 else "synthetic 25-36")
             for i, p in enumerate(synthetic)]
    if args.opinionqa:
        pairs += opinionqa_known_pairs(args.opinionqa)
    llm = load_llm(args.judge, threads=args.threads)
    for name in names:
        began = time.time()
        result = check_judge(llm, pairs, prompt=VARIANTS[name])
        print(f"\n## {name} ({time.time() - began:.0f} s)\n")
        print(judge_check_markdown(result))


if __name__ == "__main__":
    main()
