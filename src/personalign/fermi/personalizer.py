"""Fermi, Fermi without RoP and OPRO behind the method protocol, and
``fermi_transfer:A``: Fermi's prompts fit with task model A and answered by the run's task model.

All three run the same :class:`~personalign.fermi.optimizer.Fermi` loop: ``fermi`` picks a
prompt per question by Retrieval-of-Prompt, ``fermi_norop`` answers with the pool's best prompt,
``opro`` optimizes with a memory of (prompt, score) only. Fermi with and without RoP make the
same optimizer and task-model calls, so the second of them is answered by the call cache.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from typing import Any, Literal, Sequence

from personalign.fermi.config import FermiConfig
from personalign.fermi.config import preset as fermi_preset
from personalign.fermi.optimizer import Fermi, PoolPrompt
from personalign.runtime.cost import (
    PROMPT_TOKENS, Cost, item_tokens, scored_questions, shots_tokens,
)
from personalign.runtime.data.records import Opinion, User
from personalign.runtime.data.splits import optimization_split
from personalign.runtime.errors import ConfigError, DataError
from personalign.runtime.executor import in_worker
from personalign.runtime.llm.base import LLM
from personalign.runtime.personalizer import (
    Answer, Personalization, Personalizer, ScoredPrompt, SharedModels, check_questions,
    check_user,
)


# for projections: tokens of the meta-prompt's fixed instructions
META_PROMPT_OVERHEAD = 200


class FermiPersonalizer(Personalizer):
    name, label = "fermi", "Fermi"
    depends_on = ("task", "scoring", "embedder")
    min_opinions = 2
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
        return cls(models, cls.settings_config(settings).to_dict())

    @classmethod
    def settings_config(cls, settings) -> FermiConfig:
        """The config this method fits with under the run's settings: the preset, the
        fields the method sets from the settings, then ``settings.fermi`` (which wins)."""
        overrides = {**cls.preset_overrides(settings), **settings.fermi}
        return fermi_preset(settings.preset, seed=settings.seed, **overrides)

    @classmethod
    def preset_overrides(cls, settings) -> dict[str, Any]:
        """Config fields this method sets from the run's settings (``--fermi`` wins)."""
        return {}

    @staticmethod
    def fit_calls(config: FermiConfig, n_opinions: int) -> int:
        """An upper bound of the LLM calls a fit with ``config`` makes for a user with
        ``n_opinions``, retries included; every scored item and every optimizer request is
        one call (the DSPy peers' budget)."""
        opt, demo = optimization_split([None] * n_opinions, config.optimization_fraction)
        scored = (1 + config.iterations * config.replies_per_iteration) * len(opt)
        if config.rop_include_demo and demo:
            scored += config.pool_size * len(demo)
        return scored + config.iterations * (1 + config.max_retries)

    @classmethod
    def project(cls, shots: Sequence[Opinion], test: Sequence[Opinion], settings
                ) -> dict[str, Cost]:
        """The fit's phases by the algorithm: one scoring pass of the initial prompt on the
        optimization opinions, then T iterations of K optimizer calls and K scoring passes,
        the pool scored on the demonstration opinions; one scored item per test question."""
        cfg = cls.settings_config(settings)
        opt, demo = optimization_split(shots, cfg.optimization_fraction)
        opt_tokens = item_tokens(opt)
        samples = cfg.replies_per_iteration
        prompts = 1 + cfg.iterations * samples
        pool = cfg.pool_size
        meta = (META_PROMPT_OVERHEAD + opt_tokens
                + cfg.memory_size * PROMPT_TOKENS + cfg.failure_case_cap * 40)
        reply = cfg.optimizer_max_tokens or PROMPT_TOKENS + cfg.optimizer_token_margin
        # past opinions shown with each predicted question (Fermi + few-shot), and with each
        # scored one under context_at_fit
        context = shots_tokens(shots, cfg.context_shots)
        fit_context = context if cfg.context_at_fit else 0
        out = {f"{cls.mode}/score": Cost(prompts * len(opt), prompts * (
                   opt_tokens + (PROMPT_TOKENS + fit_context) * len(opt))),
               f"{cls.mode}/optimize": Cost(cfg.iterations * samples,
                                            cfg.iterations * samples * (meta + reply))}
        if cfg.rop_include_demo and demo:
            out[f"{cls.mode}/pool"] = Cost(pool * len(demo), pool * (
                item_tokens(demo) + (PROMPT_TOKENS + fit_context) * len(demo)))
        return {**out, **scored_questions(f"{cls.name}/predict", test, PROMPT_TOKENS + context)}

    def _estimator(self) -> Fermi:
        return Fermi(self.config, self.models.task_llm, self.models.optimizer_llm,
                     self.models.embedding)

    def fit(self, user: User) -> "FermiPersonalizer":
        user = self.check_data(user)
        self.estimator = self._estimator().fit(user, progress=not in_worker())
        self.user_id = user.user_id
        return self

    def predict(self, questions: Sequence[Opinion]) -> list[Answer]:
        self._require_fitted()
        return self.estimator.answers(check_questions(questions), use_rop=self.use_rop,
                                      phase=f"{self.name}/predict")

    def system_prompt(self, query: str) -> str | None:
        probe = Opinion(question=query, options=(), answer=0)
        return self.estimator.pool[self.estimator.select([probe], self.use_rop)[0]].prompt

    def fit_report(self) -> dict[str, Any]:
        est = self.estimator
        return {"pool": [p.to_dict() for p in est.pool],
                **(est.result.to_dict() if est and est.result else {})}

    def describe(self) -> Personalization:
        self._require_fitted()
        result = self.estimator.result
        return Personalization(self.name, tuple(ScoredPrompt(p.prompt, p.train_score)
                                                for p in self.estimator.pool),
                               collapsed=None if result is None else result.collapsed)

    @property
    def fit_rounds(self) -> int | None:
        return self.config.iterations

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
    to the question, shown as the few-shot baseline shows them (what a product would run).
    It is Fermi with ``context_shots`` = the few-shot baseline's k (unless set); with
    ``context_at_fit`` the prompts are scored with their shots during optimization too."""

    name, label = "fermi+fewshot", "Fermi + few-shot"

    def __init__(self, models: SharedModels, config: dict[str, Any] | None = None,
                 k: int | None = None):
        # ``k``: a file saved before ``context_shots``, whose shots were added at prediction only
        self.k = k
        if k is not None:
            config = {**(config or {}), "context_shots": k, "context_at_fit": False}
        super().__init__(models, config)
        if self.config.context_shots < 1:
            raise ConfigError(f"{self.name} shows past opinions: context_shots must be >= 1")

    @classmethod
    def preset_overrides(cls, settings) -> dict[str, Any]:
        return {"context_shots": settings.fewshot_k}

    def set_state(self, state: dict[str, Any]) -> None:
        if "opinions" in state:  # saved before ``context_shots``: see ``__init__``
            state = {**state, "context_opinions": state["opinions"],
                     "config": {**state["config"], "context_shots": self.config.context_shots,
                                "context_at_fit": False}}
        super().set_state(state)


def transfer(estimator: Fermi, task_llm: LLM, opinions: Sequence[Opinion],
             correctness: Literal["eval", "fit"] = "eval") -> Fermi:
    """``estimator``'s pool answered by ``task_llm`` (another task model).

    ``correctness="eval"``: each pool prompt's per-question correctness, which RoP ranks
    prompts by, is measured again with ``task_llm`` on the user's own training opinions (one
    scoring call per prompt and question); ``"fit"`` reuses it as measured with the model the
    pool was fit with. A moved prompt's ``train_score`` is its mean correctness over all the
    pool's questions (the fit's counts only the optimization part).
    """
    moved = Fermi(estimator.config, task_llm, None, estimator.embedder)
    moved.user_id, moved.profile = estimator.user_id, estimator.profile
    moved.context_opinions = list(estimator.context_opinions)
    moved.train_questions = list(estimator.train_questions)
    moved.result, moved.memory = estimator.result, estimator.memory
    moved.fit_task_model = estimator.fit_task_model
    if correctness == "fit":
        moved.pool = [PoolPrompt(p.prompt, p.train_score, list(p.correctness))
                      for p in estimator.pool]
        return moved
    # The pool's questions by text, in the order they were cached (texts may repeat).
    by_text: dict[str, list[Opinion]] = defaultdict(list)
    for o in opinions:
        by_text[o.question].append(o)
    questions = []
    for text in estimator.train_questions:
        if not by_text.get(text):
            raise DataError(f"the pool was fit on a question not among the user's opinions: "
                            f"{text[:60]!r}", field="opinions")
        questions.append(by_text[text].pop(0))
    with task_llm.phase(f"{estimator.config.mode}/transfer"):
        scored = moved._score_prompts([p.prompt for p in estimator.pool], questions, -1)
    moved.pool = []
    for c in scored:
        per = moved.sample_scores(c.predictions, questions)
        moved.pool.append(PoolPrompt(c.prompt, sum(per) / max(1, len(per)), per))
    moved.fit_task_model = {"backend": task_llm.backend, "model_id": task_llm.model_id}
    return moved


class FermiTransfer(FermiPersonalizer):
    """Fermi fit with task model A (``fermi_transfer:A``) and evaluated with the run's task
    model, RoP correctness measured again with it (or reused: ``transfer_correctness="fit"``).
    Beside ``fermi`` in the same run, the paired difference is the transfer gap."""

    name, label = "fermi_transfer", "Fermi (transferred)"

    def __init__(self, models: SharedModels, config: dict[str, Any] | None = None,
                 fit_model: str = "", correctness: Literal["eval", "fit"] = "eval"):
        super().__init__(models, config)
        if not fit_model:
            raise ConfigError("fermi_transfer needs the model to fit with: fermi_transfer:MODEL")
        if correctness not in ("eval", "fit"):
            raise ConfigError(f"transfer correctness must be eval or fit, got {correctness!r}")
        self.fit_model, self.correctness = fit_model, correctness
        self.fitted_with: Fermi | None = None

    @classmethod
    def from_spec(cls, models: SharedModels, arg: str | None, settings) -> "FermiTransfer":
        if not arg:
            raise ConfigError("fermi_transfer needs the model to fit with: fermi_transfer:MODEL")
        base = fermi_preset(settings.preset, seed=settings.seed, **settings.fermi)
        return cls(models, base.to_dict(), arg, settings.transfer_correctness)

    @classmethod
    def from_fitted(cls, fitted: FermiPersonalizer, eval_models: SharedModels, user: User,
                    correctness: Literal["eval", "fit"] = "eval") -> "FermiTransfer":
        """A saved Fermi fit (``fitted``, loaded with its own task model) moved to
        ``eval_models``' task model; ``user``: the training opinions it was fit on."""
        if type(fitted) is not FermiPersonalizer or fitted.estimator is None:
            raise ConfigError(f"only a fitted fermi pool transfers to another task model, not "
                              f"{fitted.name}: fit it again with that model")
        method = cls(eval_models, fitted.params()["config"], fitted.models.task, correctness)
        method.fitted_with = fitted.estimator
        method.estimator = transfer(fitted.estimator, eval_models.task_llm,
                                    check_user(user).opinions, correctness)
        method.user_id = fitted.user_id
        return method

    def fit(self, user: User) -> "FermiTransfer":
        user = self.check_data(user)
        # The same shared models with another task model: loaded LLMs are shared, not copied.
        fit_models = replace(self.models, task=self.fit_model)
        native = FermiPersonalizer(fit_models, self.params()["config"]).fit(user)
        self.fitted_with = native.estimator
        self.estimator = transfer(native.estimator, self.models.task_llm, user.opinions,
                                  self.correctness)
        self.user_id = user.user_id
        return self

    def fit_report(self) -> dict[str, Any]:
        report = super().fit_report()
        if self.fitted_with is not None:
            # mean correctness of each pool prompt over the same questions (the pool's), with
            # the fit model and with the eval model: comparable, unlike train_score
            def means(est: Fermi) -> list[float]:
                return [sum(p.correctness) / max(1, len(p.correctness)) for p in est.pool]

            report["transfer"] = {
                "fit_model": self.fit_model, "correctness": self.correctness,
                "fit_pool_scores": means(self.fitted_with),
                "eval_pool_scores": means(self.estimator)}
        return report
