"""Fermi, Fermi without RoP and OPRO behind the method protocol.

All three run the same :class:`~personalign.fermi.optimizer.Fermi` loop: ``fermi`` picks a
prompt per question by Retrieval-of-Prompt, ``fermi_norop`` answers with the pool's best prompt,
``opro`` optimizes with a memory of (prompt, score) only. Fermi with and without RoP make the
same optimizer and task-model calls, so the second of them is answered by the call cache.
"""

from __future__ import annotations

from typing import Any, Sequence

from personalign.fermi.config import FermiConfig
from personalign.fermi.config import preset as fermi_preset
from personalign.fermi.baselines import answered_block, retrieve
from personalign.fermi.optimizer import Fermi
from personalign.fermi.tasks import question_block
from personalign.runtime.data.records import Opinion, User
from personalign.runtime.errors import ConfigError
from personalign.runtime.llm.types import ChoiceItem
from personalign.runtime.personalizer import (
    Answer, Personalizer, SharedModels, check_questions, check_user,
)


class FermiPersonalizer(Personalizer):
    name, label = "fermi", "Fermi"
    depends_on = ("task", "scoring", "embedder")
    mode, use_rop = "fermi", True

    def __init__(self, models: SharedModels, config: dict[str, Any] | None = None):
        super().__init__(models)
        config = {**(config or {}), "mode": self.mode, "embedder": models.embedder,
                  "scoring_method": models.scoring}
        self.config = FermiConfig.from_dict(config)
        self.estimator: Fermi | None = None

    @classmethod
    def from_spec(cls, models: SharedModels, arg: str | None, settings) -> "FermiPersonalizer":
        if arg is not None:
            raise ConfigError(f"method {cls.name} takes no argument; set the preset instead")
        base = fermi_preset(settings.preset, seed=settings.seed, **settings.fermi)
        return cls(models, base.to_dict())

    def _estimator(self) -> Fermi:
        return Fermi(self.config, self.models.task_llm, self.models.optimizer_llm,
                     self.models.embedding)

    def fit(self, user: User) -> "FermiPersonalizer":
        user = check_user(user, min_opinions=2)
        self.estimator = self._estimator().fit(user, progress=True)
        self.user_id = user.user_id
        return self

    def predict(self, questions: Sequence[Opinion]) -> list[Answer]:
        self._require_fitted()
        details = self.estimator.predict_details(
            check_questions(questions), use_rop=self.use_rop, phase=f"{self.name}/predict")
        pool = self.estimator.pool
        return [Answer(d["choice"], d["logprobs"], prompt=pool[d["prompt_index"]].prompt,
                       prompt_index=d["prompt_index"]) for d in details]

    def system_prompt(self, query: str) -> str | None:
        probe = Opinion(question=query, options=(), answer=0)
        return self.estimator.pool[self.estimator.select([probe], self.use_rop)[0]].prompt

    def fit_report(self) -> dict[str, Any]:
        est = self.estimator
        return {"pool": [p.to_dict() for p in est.pool],
                **(est.result.to_dict() if est and est.result else {})}

    def params(self) -> dict[str, Any]:
        config = self.config.to_dict()
        for key in ("mode", "embedder", "scoring_method"):  # set by the class and the models
            config.pop(key)
        return {"config": config}

    def state(self) -> dict[str, Any]:
        return self.estimator.to_dict()

    def set_state(self, state: dict[str, Any]) -> None:
        # A loaded pool only predicts: no optimizer model needed.
        self.estimator = Fermi.from_dict(state, self.models.task_llm, None,
                                         self.models.embedding)


class FermiNoRoP(FermiPersonalizer):
    name, label = "fermi_norop", "Fermi w/o RoP"
    use_rop = False


class OPRO(FermiPersonalizer):
    name, label = "opro", "OPRO"
    mode, use_rop = "opro", False


class FermiFewShot(FermiPersonalizer):
    """Beyond the paper: the RoP-selected prompt followed by the k past opinions most similar
    to the question, shown as the few-shot baseline shows them (what a product would run)."""

    name, label = "fermi+fewshot", "Fermi + few-shot"

    def __init__(self, models: SharedModels, config: dict[str, Any] | None = None, k: int = 3):
        super().__init__(models, config)
        self.k = k
        self.opinions: list[Opinion] = []

    @classmethod
    def from_spec(cls, models: SharedModels, arg: str | None, settings) -> "FermiFewShot":
        method = super().from_spec(models, arg, settings)
        method.k = settings.fewshot_k
        return method

    def fit(self, user: User) -> "FermiFewShot":
        super().fit(user)
        self.opinions = list(user.opinions)
        return self

    def predict(self, questions: Sequence[Opinion]) -> list[Answer]:
        self._require_fitted()
        questions = check_questions(questions)
        picks = self.estimator.select(questions, use_rop=True)
        shown = retrieve(self.opinions, questions, self.k, "embeddings", self.models.embedding)
        items = []
        for q, p, idx in zip(questions, picks, shown):
            blocks = [answered_block(self.opinions[i]) for i in reversed(idx)]
            prefix = "\n\n".join([self.estimator.pool[p].prompt, *blocks]) + "\n\n"
            items.append(ChoiceItem(prefix=prefix, prompt=question_block(q.question, q.options),
                                    options=tuple(q.options)))
        llm = self.models.task_llm
        with llm.phase(f"{self.name}/predict"):
            results = llm.score_choices(items, method=self.models.scoring)
        return [Answer(r.choice, r.logprobs, prompt=self.estimator.pool[p].prompt,
                       shots=[self.opinions[i].qid or self.opinions[i].question for i in idx],
                       prompt_index=p) for r, p, idx in zip(results, picks, shown)]

    def params(self) -> dict[str, Any]:
        return {**super().params(), "k": self.k}

    def state(self) -> dict[str, Any]:
        return {**super().state(), "opinions": [o.to_dict() for o in self.opinions]}

    def set_state(self, state: dict[str, Any]) -> None:
        state = dict(state)
        self.opinions = [Opinion.from_dict(o) for o in state.pop("opinions")]
        super().set_state(state)
