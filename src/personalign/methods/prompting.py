"""Prompt-level baselines on the task model: random choice, the vanilla task instruction, the
profile prompt, and few-shot with the user's most similar past opinions (docs/benchmark.md).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from personalign.runtime.cost import PROMPT_TOKENS, Cost, scored_questions, shots_tokens
from personalign.runtime.data.opinionqa import profile_text
from personalign.runtime.data.records import Opinion, User
from personalign.runtime.errors import ConfigError
from personalign.runtime.llm.types import ChoiceItem
from personalign.runtime.personalizer import (
    Answer, Personalizer, SharedModels, check_questions,
)
from personalign.runtime.prompts import (
    FEWSHOT_INSTRUCTION, TASK_INSTRUCTION, answered_block, choice_item, fewshot_items,
    profile_prompt,
)
from personalign.runtime.retrieval import retrieve


class ScoredBaseline(Personalizer):
    """Answers every question through the task model's one scoring path."""

    def _score(self, items: Sequence[ChoiceItem]) -> list:
        llm = self.models.task_llm
        with llm.phase(f"{self.name}/predict"):
            return llm.score_choices(items, method=self.models.scoring)


class RandomChoice(Personalizer):
    """Uniform random choice, reported as its expected accuracy (1 / number of options)."""

    name, label = "random", "Random (expected)"
    depends_on = ()

    def fit(self, user: User) -> "RandomChoice":
        self.user_id = self.check_data(user).user_id
        return self

    @classmethod
    def project(cls, shots: Sequence[Opinion], test: Sequence[Opinion], settings: Any
                ) -> dict[str, Cost]:
        return {}  # no LLM

    def predict(self, questions: Sequence[Opinion]) -> list[Answer]:
        self._require_fitted()
        return [Answer(None, [-math.log(len(q.options))] * len(q.options))
                for q in check_questions(questions)]

    def state(self) -> dict[str, Any]:
        return {}

    def set_state(self, state: dict[str, Any]) -> None:
        pass


class FixedPrompt(ScoredBaseline):
    """One instruction for every question, from the user's profile or not."""

    def __init__(self, models: SharedModels):
        super().__init__(models)
        self.prompt = ""

    def make_prompt(self, user: User) -> str:
        raise NotImplementedError

    def fit(self, user: User) -> "FixedPrompt":
        user = self.check_data(user)
        self.prompt, self.user_id = self.make_prompt(user), user.user_id
        return self

    def predict(self, questions: Sequence[Opinion]) -> list[Answer]:
        self._require_fitted()
        results = self._score([choice_item(self.prompt, q) for q in check_questions(questions)])
        return [Answer(r.choice, r.logprobs, prompt=self.prompt) for r in results]

    def system_prompt(self, query: str) -> str | None:
        return self.prompt

    def state(self) -> dict[str, Any]:
        return {"prompt": self.prompt}

    def set_state(self, state: dict[str, Any]) -> None:
        self.prompt = state["prompt"]


class Vanilla(FixedPrompt):
    """The task instruction only: what the model answers for anyone."""

    name, label = "vanilla", "Vanilla"

    def make_prompt(self, user: User) -> str:
        return TASK_INSTRUCTION


class Profile(FixedPrompt):
    """The user's demographic profile in the instruction (Fermi's initial prompt)."""

    name, label = "profile", "Profile prompt"

    def make_prompt(self, user: User) -> str:
        return profile_prompt(profile_text(user.profile) if user.profile else
                              (user.description or ""))

    @classmethod
    def project(cls, shots: Sequence[Opinion], test: Sequence[Opinion], settings: Any
                ) -> dict[str, Cost]:
        return scored_questions(f"{cls.name}/predict", test, PROMPT_TOKENS)


class FewShot(ScoredBaseline):
    """The k past opinions of the user most similar to the question, answered, in context."""

    name, label = "fewshot", "Few-shot"
    depends_on = ("task", "scoring", "embedder")
    min_opinions = 1

    def __init__(self, models: SharedModels, k: int = 3, retriever: str = "embeddings"):
        super().__init__(models)
        if k < 1 or retriever not in ("embeddings", "bm25"):
            raise ConfigError(f"few-shot needs k >= 1 and retriever embeddings or bm25, got "
                              f"k={k}, retriever={retriever!r}")
        self.k, self.retriever = k, retriever
        self.opinions: list[Opinion] = []

    @classmethod
    def from_spec(cls, models: SharedModels, arg: str | None, settings) -> "FewShot":
        return cls(models, settings.fewshot_k, arg or settings.retriever)

    @classmethod
    def project(cls, shots: Sequence[Opinion], test: Sequence[Opinion], settings: Any
                ) -> dict[str, Cost]:
        return scored_questions(f"{cls.name}/predict", test,
                                shots_tokens(shots, settings.fewshot_k))

    def fit(self, user: User) -> "FewShot":
        user = self.check_data(user)
        self.opinions, self.user_id = list(user.opinions), user.user_id
        return self

    def _embedder(self):
        return self.models.embedding if self.retriever == "embeddings" else None

    def predict(self, questions: Sequence[Opinion]) -> list[Answer]:
        self._require_fitted()
        questions = check_questions(questions)
        items = fewshot_items(self.opinions, questions, self.k, self.retriever, self._embedder())
        picks = retrieve(self.opinions, questions, self.k, self.retriever, self._embedder())
        return [Answer(r.choice, r.logprobs, prompt=FEWSHOT_INSTRUCTION,
                       shots=[self.opinions[i].qid or self.opinions[i].question for i in idx])
                for r, idx in zip(self._score(items), picks)]

    def system_prompt(self, query: str) -> str | None:
        probe = Opinion(question=query, options=(), answer=0)
        idx = retrieve(self.opinions, [probe], self.k, self.retriever, self._embedder())[0]
        blocks = [answered_block(self.opinions[i]) for i in reversed(idx)]
        return "This person answered these questions before:\n\n" + "\n\n".join(blocks) + \
            "\n\nAnswer the way this person would."

    def state(self) -> dict[str, Any]:
        return {"opinions": [o.to_dict() for o in self.opinions]}

    def set_state(self, state: dict[str, Any]) -> None:
        self.opinions = [Opinion.from_dict(o) for o in state["opinions"]]
