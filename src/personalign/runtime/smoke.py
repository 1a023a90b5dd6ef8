"""Smoke run of the three runtime operations on the embedded models, with measured speeds."""

from __future__ import annotations

import time
from dataclasses import dataclass

from personalign.runtime import models
from personalign.runtime.embeddings import Embedder
from personalign.runtime.llm.types import ChoiceItem, SamplingParams

_QUESTIONS = [
    ("What is the capital of France?", ("Berlin", "Paris", "Madrid")),
    ("What color is the sky on a clear day?", ("Green", "Red", "Blue")),
    ("Which animal says meow?", ("Dog", "Cow", "Cat")),
    ("What do bees make?", ("Honey", "Steel", "Plastic")),
    ("What is frozen water called?", ("Sand", "Ice", "Smoke")),
    ("How many days are in a week?", ("Seven", "Three", "Twelve")),
    ("What do you use to write on paper?", ("A pen", "A spoon", "A shoe")),
    ("Where do fish live?", ("In water", "In trees", "In the sky")),
]
_GOLD = [1, 2, 2, 0, 1, 0, 0, 0]


@dataclass
class SmokeRow:
    model: str
    load_s: float
    items_per_s: float
    accuracy: float
    tokens_per_s: float
    sample: str


def run_smoke(threads: int | None = None, repeats: int = 4) -> tuple[list[SmokeRow], dict]:
    """Load each embedded LLM, score easy questions, generate; then embed. No cache."""
    from personalign.runtime.llm.transformers_backend import TransformersLLM

    rows = []
    for name in (models.FAST_TASK, models.FAST_GENERATOR):
        models.prepare(name)
        start = time.perf_counter()
        llm = TransformersLLM(name, threads=threads, cache=False)
        load_s = time.perf_counter() - start
        prefix = "Answer each question with the correct answer.\n\n"
        items = [ChoiceItem(prefix=prefix, prompt=f"Question: {q}\nAnswer:", options=o)
                 for q, o in _QUESTIONS] * repeats
        llm.score_choices(items[:2], "text")  # warm-up
        start = time.perf_counter()
        results = llm.score_choices(items, "text")
        items_per_s = len(items) / (time.perf_counter() - start)
        accuracy = sum(r.choice == g for r, g in zip(results, _GOLD * repeats)) / len(items)
        prompt = ([{"role": "user", "content": "Describe a good breakfast in two sentences."}]
                  if llm.has_chat_template else "A good breakfast is")
        before = llm.usage.completion_tokens
        start = time.perf_counter()
        texts = llm.generate([prompt], SamplingParams(n=4, temperature=1.0, max_tokens=64,
                                                      seed=0))[0]
        tokens_per_s = (llm.usage.completion_tokens - before) / (time.perf_counter() - start)
        rows.append(SmokeRow(name, load_s, items_per_s, accuracy, tokens_per_s,
                             texts[0].strip().replace("\n", " ")[:80]))
    embedder = Embedder()
    start = time.perf_counter()
    embedder.embed(["warm-up"])
    load_s = time.perf_counter() - start
    texts = [q for q, _ in _QUESTIONS] * 8
    start = time.perf_counter()
    sims = embedder.similarity(["How old are you?"], ["What is your age?", "Stocks fell today."])
    embedder.embed([f"{t} #{i}" for i, t in enumerate(texts)])
    texts_per_s = (len(texts) + 3) / (time.perf_counter() - start)
    emb = {"model": models.DEFAULT_EMBEDDER, "load_s": load_s, "texts_per_s": texts_per_s,
           "paraphrase_sim": float(sims[0, 0]), "unrelated_sim": float(sims[0, 1])}
    return rows, emb
