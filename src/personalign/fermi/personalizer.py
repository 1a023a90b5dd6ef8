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
from personalign.fermi.optimizer import Fermi
from personalign.methods.prompting import check_questions, check_user
from personalign.runtime.data.records import Opinion, User
from personalign.runtime.errors import ConfigError
from personalign.runtime.personalizer import Answer, Personalizer, SharedModels


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
        self.estimator = self._estimator().fit(user)
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
