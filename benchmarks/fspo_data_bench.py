"""Wall time of the synthetic preference pipeline on a tiny Reviews dataset (real SmolLM2).

    PERSONALIGN_THREADS=1 python benchmarks/fspo_data_bench.py [--repeats 2]

The same dataset as ``tests/fspo_data/test_real_model.py`` (2 users, 2 questions, 4 short
generations, 16 scored judge items, 1 refinement round), built in a fresh folder with the call
cache off, so every run pays for every call. Prints seconds per run and the LLM calls per
phase.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from personalign.fspo.data.pipeline import SyntheticPipeline
from personalign.runtime.llm.transformers_backend import TransformersLLM
from personalign.runtime.llm.types import Usage
from tests.fspo_data.test_real_model import tiny_reviews_config

QUESTIONS = ("Write a review of the movie 'Ocean Lights'.\n"
             "Write a review of the movie 'The Last Train'.\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int,
                        default=int(os.environ.get("PERSONALIGN_THREADS", "1")))
    args = parser.parse_args()
    start = time.time()
    llm = TransformersLLM("smollm2-135m-instruct", cache=False, threads=args.threads)
    print(f"model load: {time.time() - start:.1f} s ({args.threads} thread(s))")
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            questions = Path(tmp) / "questions.txt"
            questions.write_text(QUESTIONS)
            llm.usage = Usage()  # this run's calls only
            pipeline = SyntheticPipeline(tiny_reviews_config(str(questions)),
                                         llms={"smollm2-135m-instruct": llm}, progress=False)
            start = time.time()
            summary = pipeline.run(Path(tmp) / "out")
            seconds = time.time() - start
        phases = {name: u["calls"] for name, u in llm.usage.as_dict().get("by_phase",
                                                                           {}).items()}
        print(f"run {repeat + 1}: {seconds:.1f} s, {summary['judged_pairs']} pairs judged, "
              f"{summary['kept_pairs']} kept, calls per phase {phases}")


if __name__ == "__main__":
    main()
