"""FSPO behind the method protocol: a (meta-trained) model conditioned on the user's shots.

``fspo:RUN`` answers with the model a ``personalign fspo train`` run left in ``RUN/final``
(``RUN`` may also name a model folder, or ``base`` for the untrained base model with the same
shots); ``pooled:RUN`` is preference training without shots, asked without shots; ``oracle``
puts the user's description before the shots. ``fit`` only chooses the user's N shots: their
preference pairs, or pairs made from their opinions (protocol opinionqa-preferences) with the
rejected-option rule the model was trained with (its manifest's ``rejected_rule``;
``ordinal-farthest`` for ``base`` and for models that do not record one).

User descriptions (:mod:`personalign.fspo.description`): ``fspo:RUN:rat`` first has the model
write the user's description from the shots (FSPO's predicted description), then answer after
it, per question; a model trained on the user-description variant (its manifest's
``variant``) is asked that way too, after the user's true description (their profile text)
where the user has one. ``describe()`` shows the description of the latest answer.

The model runs on the runtime's engine: LoRA adapters merged at load, the shots as the cached
prefix shared by all of a user's questions, each option scored as FSPO's completion
("## Preferred Response\\n{option}\\n" and EOS), so calls, cache and usage are the runtime's.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, ClassVar, Literal, Sequence

from personalign.fspo.data.episodes import select_shots
from personalign.fspo.data.opinionqa_prefs import LEGACY_REJECTED, opinion_pairs, opinion_prompt
from personalign.fspo.data.serialization import Shot, serialize_prompt
from personalign.fspo.description import DESCRIPTION_TOKENS, descriptions_for, with_description
from personalign.fspo.train.model import model_files, read_manifest
from personalign.runtime.cost import CHARS_PER_TOKEN, Cost, item_tokens
from personalign.runtime.data.opinionqa import profile_text
from personalign.runtime.data.records import Opinion, PreferencePair, User
from personalign.runtime.errors import ConfigError, DataError
from personalign.runtime.llm.base import LLM
from personalign.runtime.llm.types import ChoiceItem, Message
from personalign.runtime.personalizer import (
    Answer, ChatPlan, Personalization, Personalizer, SharedModels, check_questions, check_user,
    last_user_text,
)
from personalign.runtime.prompts import answered_block

RESPONSE_HEADER = "## Preferred Response\n"


def fspo_llm(models: SharedModels, spec: str) -> LLM:
    """The FSPO model of ``spec`` on the engine, loaded once per run."""
    base, adapters = model_files(spec)
    return models.llm(base, adapters=tuple(adapters), name=f"fspo:{spec}", option_eos=True,
                      option_template=RESPONSE_HEADER + "{option}\n")


def as_shot(pair: PreferencePair) -> Shot:
    return Shot(pair.prompt.strip(), pair.chosen.strip(), pair.rejected.strip())


class FSPO(Personalizer):
    name, label = "fspo", "FSPO"
    depends_on: ClassVar[tuple[str, ...]] = ()  # the model is a parameter
    prompt_mode: ClassVar[Literal["shots", "zero-shot", "oracle"]] = "shots"
    default_model: ClassVar[str | None] = "base"

    def __init__(self, models: SharedModels, model: str = "base", n_shots: int = 8,
                 seed: int = 0, rat: bool = False):
        super().__init__(models)
        if n_shots < 0:
            raise ConfigError(f"n_shots must be >= 0, got {n_shots}")
        self.model, self.n_shots, self.seed, self.rat = model, n_shots, seed, rat
        self.shots: list[Shot] = []
        self.description = ""
        self.last_description: str | None = None  # what the latest answer followed

    @classmethod
    def parse_arg(cls, arg: str | None) -> tuple[str, bool]:
        """(model, rat) of the spec argument ``RUN`` or ``RUN:rat``."""
        model, sep, mode = (arg or "").partition(":")
        if (sep and mode != "rat") or (sep and not model):
            raise ConfigError(f"method {cls.name}:{arg}: expected {cls.name}:RUN or "
                              f"{cls.name}:RUN:rat (a model folder whose path contains ':' is "
                              "not supported)")
        if sep and cls.prompt_mode != "shots":
            raise ConfigError(f"method {cls.name}: rat (a description written from the "
                              "shots) is fspo's; use fspo:RUN:rat")
        model = model or cls.default_model
        if model is None:
            raise ConfigError(f"method {cls.name} needs a trained model: {cls.name}:RUN_FOLDER")
        return model, bool(sep)

    @classmethod
    def from_spec(cls, models: SharedModels, arg: str | None, settings) -> "FSPO":
        model, rat = cls.parse_arg(arg)
        model_files(model)  # a wrong folder fails now, not after the first users
        return cls(models, model, settings.fspo_shots, settings.seed, rat=rat)

    @classmethod
    def project(cls, shots: Sequence[Opinion], test: Sequence[Opinion], settings
                ) -> dict[str, Cost]:
        """The shots' preference pairs before every question, one text-scoring call per
        option."""
        shown = sum(len(answered_block(o)) for o in shots[:settings.fspo_shots]) \
            // CHARS_PER_TOKEN
        return {f"{cls.name}/predict": Cost(sum(len(q.options) for q in test),
                                            item_tokens(test) + shown * len(test))}

    @classmethod
    def project_spec(cls, arg: str | None, shots: Sequence[Opinion], test: Sequence[Opinion],
                     settings) -> dict[str, Cost]:
        """A description-first model also writes a description before every question (an
        upper bound for a user-description-variant model, which is given the user's own
        where there is one); every answer then reads it too."""
        costs = cls.project(shots, test, settings)
        model, rat = cls.parse_arg(arg)
        if not (rat or cls._variant_describes(read_manifest(model))):
            return costs
        predict = costs[f"{cls.name}/predict"]
        extra = DESCRIPTION_TOKENS * len(test)
        costs[f"{cls.name}/predict"] = Cost(predict.calls, predict.tokens + extra)
        costs[f"{cls.name}/describe"] = Cost(len(test), predict.tokens + extra)
        return costs

    @classmethod
    def _variant_describes(cls, manifest: dict[str, Any]) -> bool:
        """Whether the model was trained to describe the user first (and is asked so)."""
        return cls.prompt_mode != "oracle" and manifest.get("variant") == "user-description"

    @cached_property
    def manifest(self) -> dict[str, Any]:
        """The model's manifest, read once (every question's prompt consults it)."""
        return read_manifest(self.model)

    @property
    def describes_first(self) -> bool:
        return self.rat or self._variant_describes(self.manifest)

    @property
    def llm(self) -> LLM:
        return fspo_llm(self.models, self.model)

    def _pairs(self, user: User) -> list[PreferencePair]:
        """The user's preference pairs, or pairs made from their opinions with the model's
        rejected-option rule."""
        if user.pairs:
            return list(user.pairs)
        rule = self.manifest.get("rejected_rule") or LEGACY_REJECTED
        return [p for op in user.opinions if len(op.options) >= 2
                for p in opinion_pairs(user, op, self.seed, rule)]

    def check_data(self, user: Any) -> User:
        user = check_user(user)
        if self.prompt_mode != "zero-shot" and self.n_shots and not self._pairs(user):
            raise DataError(f"user {user.user_id!r} has no preference pairs or opinions",
                            field="opinions")
        return user

    def fit(self, user: User) -> "FSPO":
        user = self.check_data(user)
        chosen = select_shots(self._pairs(user), self.n_shots, self.seed, user.user_id)
        self.shots = [] if self.prompt_mode == "zero-shot" else [as_shot(p) for p in chosen]
        self.description = user.description or profile_text(user.profile)
        if self.prompt_mode == "oracle" and not self.description:
            raise DataError(f"user {user.user_id!r} has no description or profile (oracle)",
                            field="profile")
        self.user_id = user.user_id
        self.last_description = None
        return self

    def prompt(self, question: str) -> str:
        variant = "oracle" if self.prompt_mode == "oracle" else \
            "user-description" if self.describes_first else "default"
        return serialize_prompt(self.shots, question.strip(), variant,
                                user_description=self.description or None)

    def _prefixes(self, questions: Sequence[str]) -> list[str]:
        """What each question's preferred response follows: its prompt, and for a
        description-first model the user's description (given or written)."""
        prompts = [self.prompt(q) for q in questions]
        if not self.describes_first:
            return prompts
        given = None if self.rat else [self.description or None] * len(prompts)
        texts = descriptions_for(self.llm, prompts, f"{self.name}/describe", given)
        self.last_description = texts[-1] if texts else self.last_description
        return [with_description(p, t) for p, t in zip(prompts, texts)]

    def predict(self, questions: Sequence[Opinion]) -> list[Answer]:
        self._require_fitted()
        questions = check_questions(questions)
        # The whole prompt is the prefix: the engine's prompt cache runs a user's shots once
        # and each question's own tokens after them.
        items = [ChoiceItem(prefix=prefix, prompt="", options=q.options) for prefix, q in
                 zip(self._prefixes([opinion_prompt(q) for q in questions]), questions)]
        llm = self.llm
        with llm.phase(f"{self.name}/predict"):
            results = llm.score_choices(items, method="text")
        shown = [s.question for s in self.shots]
        return [Answer(r.choice, r.logprobs, shots=shown) for r in results]

    def chat_plan(self, messages: Sequence[Message]) -> ChatPlan:
        """The preferred response to the last user message, in FSPO's raw-text format."""
        self._require_fitted()
        prefix = self._prefixes([last_user_text(messages)])[0]
        applied: dict[str, Any] = {"shots": len(self.shots)}
        if self.describes_first:
            applied["description"] = self.last_description
        return ChatPlan(self.llm, prefix + RESPONSE_HEADER, stop=("\n#",), applied=applied,
                        strip=True)

    def describe(self) -> Personalization:
        self._require_fitted()
        return Personalization(self.name, shots=len(self.shots), model=self.model,
                               description=self.last_description)

    def state(self) -> dict[str, Any]:
        return {"shots": [[s.question, s.preferred, s.dispreferred] for s in self.shots],
                "description": self.description}

    def set_state(self, state: dict[str, Any]) -> None:
        self.shots = [Shot(*s) for s in state["shots"]]
        self.description = state["description"]


class Pooled(FSPO):
    """Preference training pooled over users, without shots (FSPO's zero-shot baseline)."""

    name, label = "pooled", "Pooled preferences"
    prompt_mode = "zero-shot"
    default_model = None


class Oracle(FSPO):
    """The user's true description before the shots (an upper reference for FSPO)."""

    name, label = "oracle", "Oracle description"
    prompt_mode = "oracle"
