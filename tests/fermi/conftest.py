"""Shared fixtures for Fermi tests: a tiny synthetic user (no real data) and fakes."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest

from personalign.runtime.data.records import Opinion, User
from personalign.runtime.llm.fake import FakeLLM


class BagEmbedder:
    """Deterministic bag-of-words embeddings (unit tests never load MiniLM)."""

    dim = 64

    def embed(self, texts):
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in re.findall(r"[a-z]+", t.lower()):
                out[i, int(hashlib.md5(w.encode()).hexdigest(), 16) % self.dim] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1, norms)

    def similarity(self, queries, corpus):
        return self.embed(queries) @ self.embed(corpus).T


TOPICS = ["guns", "taxes", "climate", "health", "school", "police", "trade", "news"]


def make_user(user_id: str = "u1", n: int = 40) -> User:
    ops = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        ops.append(Opinion(question=f"How do you feel about {topic} policy number {i}?",
                           options=("Agree", "Disagree", "Not sure"), answer=i % 3,
                           qid=f"Q{i}", topic=topic))
    return User(user_id=user_id, profile={"AGE": "30-49", "SEX": "Female",
                                          "CREGION": "West"}, opinions=tuple(ops))


def scripted_optimizer() -> FakeLLM:
    """An optimizer whose replies cycle through good, bracket-less and broken formats."""
    replies = ["Here is a new text: [Answer like a thoughtful western woman, sample {k}.]",
               "Sure! Think as a careful voter would, variant {k}.",
               "[]", "[Answer like a thoughtful western woman, sample {k}.]",
               "[Unfinished text about a voter {k}"]
    counter = {"n": 0}

    def responder(text, i):
        counter["n"] += 1
        return replies[counter["n"] % len(replies)].format(k=counter["n"])

    return FakeLLM(responder=responder, model_id="fake-opt")


def keyword_task_llm() -> FakeLLM:
    """Answers "Agree" unless the prompt mentions 'careful', then follows the question number
    (making some prompts better than others, deterministically)."""

    def chooser(item):
        found = re.findall(r"number (\d+)", item.prompt)
        num = int(found[0]) if found else len(item.prompt)
        if "careful" in item.prefix:
            return num % 3 if num % 2 == 0 else 0
        return 0

    return FakeLLM(chooser=chooser, model_id="fake-task")


@pytest.fixture
def user():
    return make_user()


@pytest.fixture
def embedder():
    return BagEmbedder()
