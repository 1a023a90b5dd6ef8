"""The method protocol: every personalization method is a :class:`Personalizer`.

The contract, checked for every registered method by ``tests/test_personalizers.py``; the
benchmark, the cost projection and the service use nothing else of a method:

- ``from_spec(models, arg, settings)`` builds it from its registry spec ``name[:arg]`` and the
  run's :class:`~personalign.methods.MethodSettings`. Construction takes the shared runtime
  models (:class:`SharedModels`) and the method's own explicit parameters, stores each
  parameter unchanged under its own name (``params`` reads them back, as scikit-learn's
  ``get_params`` does), and does no work.
- ``check_data(user)`` says whether a user has what ``fit`` needs (``min_opinions``), as a
  ``DataError`` naming the field; ``fit`` checks the same.
- ``fit(user)`` learns from ONE user's profile, past opinions and preference pairs, and returns
  ``self``. Nothing of other users is pooled at fit time: a meta-trained model (FSPO) is a
  constructor parameter.
- ``predict(questions)`` returns one :class:`Answer` per question, in order.
- ``chat_plan(messages)`` says how it answers an open-ended chat (which LLM, which prompt, what
  was applied); ``respond`` runs that plan.
- ``describe()`` says what a fit holds (prompts, shots, model) as a :class:`Personalization`;
  ``fit_rounds`` how many optimizer rounds a fit makes (for progress), if it counts them.
- ``project(shots, test, settings)`` projects its LLM calls and tokens per phase for one user
  (:class:`~personalign.runtime.cost.Cost`) before a run; ``project_spec(arg, ...)`` is what
  the projection calls, for a method whose spec argument changes its cost (FSPO's ``:rat``).
- ``save(path)`` / ``personalign.methods.load(path, models)``: answers after load equal those
  before; a fit saved with other models (task model, scoring) is refused at load.
- Cost is counted by the LLMs' usage, per phase ``<method>/fit`` and ``<method>/predict``.
- Bad input raises the project's ``DataError`` or ``ConfigError``, never another exception.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Iterator, Sequence

from personalign.runtime import models as embedded
from personalign.runtime.config import Config
from personalign.runtime.cost import Cost, scored_questions
from personalign.runtime.data.records import Opinion, User
from personalign.runtime.errors import ConfigError, DataError
from personalign.runtime.llm.base import LLM, CallObserver
from personalign.runtime.llm.types import Message, Prompt, SamplingParams, ScoringMethod
from personalign.runtime.storage import atomic_write_json

FORMAT = "personalign.personalizer"
FORMAT_VERSION = 1


@dataclass
class Answer:
    """A method's answer to one multiple-choice question.

    ``logprobs`` are normalized over the options. An answer without a ``choice`` (random
    guessing, an unparseable generation) is read as the distribution ``logprobs``: its expected
    correctness is the probability it gives the right option.
    """

    choice: int | None
    logprobs: list[float]
    prompt: str | None = None                 # the instruction or prompt applied
    shots: list[str] = field(default_factory=list)  # past opinions shown (qid or question)
    prompt_index: int | None = None           # which of a method's prompts (Fermi's RoP)

    def correctness(self, answer: int) -> float:
        if self.choice is not None:
            return float(self.choice == answer)
        return math.exp(self.logprobs[answer]) if self.logprobs else 0.0


@dataclass
class SharedModels(Config):
    """The runtime models every method draws from, loaded once on first use and shared.

    ``task`` answers the questions, ``optimizer`` writes prompts (Fermi, OPRO), ``embedder``
    retrieves; ``scoring`` is how choices are read from the task model. Any spec
    :func:`~personalign.runtime.llm.factory.load_llm` takes works (an OpenAI-compatible server
    included). A checked config: a ``scoring`` outside its choices is a ``ConfigError``. The
    defaults here are the one definition of the default models (the CLI and the benchmark
    read them from these fields).
    """

    task: str = field(default=embedded.DEFAULT_TASK, metadata={
        "help": "The task model, which answers the questions: a load_llm spec (an embedded "
                "model's name, a local folder, llamacpp:NAME, an OpenAI-compatible server)."})
    optimizer: str = field(default=embedded.DEFAULT_OPTIMIZER, metadata={
        "help": "The optimizer model, which writes Fermi's and OPRO's prompts (a load_llm "
                "spec)."})
    embedder: str = field(default=embedded.DEFAULT_EMBEDDER, metadata={
        "help": "The sentence embedder that retrieves similar past opinions."})
    scoring: ScoringMethod = field(default="letter", metadata={
        "help": "How choices are read from the task model: letter (the option letter's "
                "log-prob), text (the option text's summed log-likelihood), generate (an "
                "answer sampled and parsed); the others correct a small model's prior "
                "(runtime.llm.debias)."})
    # Runtime state, not configuration (private: to_dict and from_dict leave it out).
    _loaded: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def of(cls, task_llm: LLM, optimizer_llm: LLM | None = None, embedder=None,
           scoring: ScoringMethod = "letter") -> "SharedModels":
        """Models that are already loaded (tests, notebooks, the service)."""
        optimizer = (optimizer_llm or task_llm).model_id
        if optimizer_llm not in (None, task_llm) and optimizer == task_llm.model_id:
            # one model on two backends (the engine, llama.cpp): two names, or one replaces
            # the other
            optimizer = f"{optimizer_llm.backend}:{optimizer}"
        shared = cls(task=task_llm.model_id, optimizer=optimizer,
                     embedder=getattr(embedder, "model_name", embedded.DEFAULT_EMBEDDER),
                     scoring=scoring)
        shared._loaded[(shared.task, ())] = task_llm
        if optimizer_llm is not None:
            shared._loaded[(shared.optimizer, ())] = optimizer_llm
        if embedder is not None:
            shared._loaded["embedder"] = embedder
        return shared

    #: whether models loaded here keep the shared call cache (a service's do not)
    llm_cache: ClassVar[bool] = True

    def llm(self, spec: str, **options: Any) -> LLM:
        key = (spec, tuple(sorted(options.items())))
        if key not in self._loaded:
            from personalign.runtime.llm.factory import load_llm

            self._loaded[key] = load_llm(spec, **options) if self.llm_cache else \
                load_llm(spec, cache=False, **options)
            self._loaded[key].observe(*getattr(self, "_observing", ()))
        return self._loaded[key]

    def viewed(self) -> "SharedModels":
        """The same models, each loaded LLM as a :meth:`~LLM.view` (same weights, counters
        and cache; its own observers): for a caller that observes only its own calls."""
        out = replace(self, _loaded={})
        for key, value in self._loaded.items():
            out._loaded[key] = value if key == "embedder" else value.view()
        return out

    @property
    def task_llm(self) -> LLM:
        return self.llm(self.task)

    @property
    def optimizer_llm(self) -> LLM:
        return self.llm(self.optimizer)

    @property
    def embedding(self):
        if "embedder" not in self._loaded:
            from personalign.runtime.embeddings import Embedder

            self._loaded["embedder"] = Embedder(self.embedder)
        return self._loaded["embedder"]

    def loaded_embedder(self):
        """The embedder if it was loaded (a deletion forgets what it cached), else None."""
        return self._loaded.get("embedder")

    def loaded_llms(self) -> dict[str, LLM]:
        """Every LLM loaded so far, by the spec it was loaded from (its model id where it was
        loaded with options, e.g. an FSPO adapter), for usage reports. Not by model id
        alone: one model on two backends (the engine and llama.cpp) would be one entry, and
        a usage difference taken across the two comes out negative."""
        return {(llm.model_id if key[1] else key[0]): llm
                for key, llm in self._loaded.items() if key != "embedder"}

    def usage(self) -> dict[str, dict]:
        """A snapshot of every loaded LLM's usage (``Usage.as_dict``), by
        :meth:`loaded_llms`' names: take the difference of two with ``usage_since``."""
        return {name: llm.usage.as_dict() for name, llm in self.loaded_llms().items()}

    @contextlib.contextmanager
    def observing(self, observer: CallObserver) -> Iterator[None]:
        """``observer`` sees every call of the LLMs loaded so far and of those loaded inside
        the block (a fit's FSPO adapter, an optimizer on first use)."""
        self._observing = (*getattr(self, "_observing", ()), observer)
        for llm in self.loaded_llms().values():
            llm.observe(observer)
        try:
            yield
        finally:
            self._observing = tuple(o for o in self._observing if o is not observer)
            for llm in self.loaded_llms().values():
                llm.unobserve(observer)

    def identity(self) -> dict[str, str]:
        return {"task": self.task, "optimizer": self.optimizer, "embedder": self.embedder,
                "scoring": self.scoring}


class Personalizer(ABC):
    """One personalization method for one user (see the module docstring for the contract)."""

    #: registry name; a registered method is built from "name" or "name:argument"
    name: ClassVar[str] = "abstract"
    #: what the report calls it
    label: ClassVar[str] = "abstract"
    #: models whose identity a saved fit depends on (checked by ``load``)
    depends_on: ClassVar[tuple[str, ...]] = ("task", "scoring")
    #: the fewest past opinions ``fit`` needs
    min_opinions: ClassVar[int] = 0

    def __init__(self, models: SharedModels):
        self.models = models
        self.user_id: str | None = None

    @classmethod
    def from_spec(cls, models: SharedModels, arg: str | None, settings: Any) -> "Personalizer":
        """The method of spec ``name[:arg]`` with the run's settings; by default a method
        takes no argument and none of the settings."""
        if arg is not None:
            raise ConfigError(f"method {cls.name} takes no argument (got {cls.name}:{arg})")
        return cls(models)

    # ---- the protocol ---------------------------------------------------------------------
    def check_data(self, user: Any) -> User:
        """``user`` if it has what ``fit`` needs, else a ``DataError`` naming the field."""
        return check_user(user, self.min_opinions)

    @abstractmethod
    def fit(self, user: User) -> "Personalizer":
        ...

    @abstractmethod
    def predict(self, questions: Sequence[Opinion]) -> list[Answer]:
        ...

    def chat_plan(self, messages: Sequence[Message]) -> "ChatPlan":
        """How an open-ended chat is answered: by default the method's personalized
        instruction (:meth:`system_prompt`) as the system message before ``messages``,
        answered by the task model."""
        self._require_fitted()
        system = self.system_prompt(last_user_text(messages))
        prompt = ([{"role": "system", "content": system}] if system else []) + list(messages)
        return ChatPlan(self.models.task_llm, prompt, applied={"system_prompt": system})

    def respond(self, messages: Sequence[Message], max_tokens: int = 256) -> str:
        """An open-ended answer, as :meth:`chat_plan` says."""
        plan = self.chat_plan(messages)
        with plan.llm.phase(f"{self.name}/respond"):
            params = plan.sampling(SamplingParams(max_tokens=max_tokens))
            return plan.finish(plan.llm.generate([plan.prompt], params)[0][0])

    def system_prompt(self, query: str) -> str | None:
        """The personalized instruction applied to ``query`` (None: none)."""
        return None

    # ---- what a fit holds -----------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """The constructor parameters (JSON-able) that rebuild this method, read from the
        attributes of the same names (a config as its dict)."""
        out = {}
        for p in inspect.signature(type(self).__init__).parameters.values():
            if p.name in ("self", "models") or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            value = getattr(self, p.name)
            out[p.name] = value.to_dict() if isinstance(value, Config) else value
        return out

    def identity(self) -> dict[str, Any]:
        """What this method's results depend on beside the user's data and the shared models:
        its resolved parameters (a benchmark unit computed under others is not reused).
        Extend it where a parameter resolves to more than it says (a preset's budget)."""
        return self.params()

    @abstractmethod
    def state(self) -> dict[str, Any]:
        """What ``fit`` learned, JSON-able."""

    @abstractmethod
    def set_state(self, state: dict[str, Any]) -> None:
        ...

    @property
    def fitted(self) -> bool:
        return self.user_id is not None

    def describe(self) -> "Personalization":
        """What the fit holds, for the service and for people."""
        self._require_fitted()
        return Personalization(self.name)

    @property
    def fit_rounds(self) -> int | None:
        """Optimizer rounds a fit makes (one optimizer request each), for progress; None:
        not counted."""
        return None

    def fit_report(self) -> dict[str, Any]:
        """What the fit did, for reports (optimizer history, failures, collapse): method
        specific and JSON-able, written into the benchmark's unit files."""
        return {}

    # ---- for the benchmark ----------------------------------------------------------------
    @classmethod
    def report_note(cls, settings: Any) -> str | None:
        """A line for the benchmark report on how this method ran with the run's method
        settings (a peer's budget rule), or None."""
        return None

    @classmethod
    def project(cls, shots: Sequence[Opinion], test: Sequence[Opinion], settings: Any
                ) -> dict[str, Cost]:
        """Projected LLM calls and tokens per phase for one user with past opinions ``shots``
        and questions ``test`` (:mod:`personalign.runtime.cost`); by default one scoring call
        per question."""
        return scored_questions(f"{cls.name}/predict", test)

    @classmethod
    def project_spec(cls, arg: str | None, shots: Sequence[Opinion], test: Sequence[Opinion],
                     settings: Any) -> dict[str, Cost]:
        """:meth:`project` for the spec ``name:arg``; by default the argument costs nothing."""
        return cls.project(shots, test, settings)

    def score(self, questions: Sequence[Opinion]) -> float:
        """Mean accuracy on answered questions, through :meth:`predict`."""
        answers = self.predict(questions)
        return sum(a.correctness(q.answer) for a, q in zip(answers, questions)) / max(
            1, len(questions))

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise ConfigError(f"{self.name} is not fitted: call fit(user) or load() first")

    def saved(self) -> dict[str, Any]:
        """What :meth:`save` writes (JSON-able); ``personalign.methods.from_saved`` reads it."""
        self._require_fitted()
        return {"format": FORMAT, "version": FORMAT_VERSION, "method": self.name,
                "params": self.params(), "models": self.models.identity(),
                "user_id": self.user_id, "state": self.state()}

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.saved())


@dataclass(frozen=True)
class ScoredPrompt:
    """A prompt a fit found, with its score on the user's training opinions."""

    prompt: str
    train_score: float


@dataclass(frozen=True)
class Personalization:
    """What a fitted method holds: the prompts it chooses from, the shots it shows, the
    model it answers with, the user description it answers after (None: not this kind of
    method, or none yet)."""

    method: str
    prompts: tuple[ScoredPrompt, ...] | None = None
    collapsed: bool | None = None           # the optimizer's prompts all came out alike
    shots: int | None = None
    model: str | None = None
    description: str | None = None          # the user description the last answer followed


@dataclass(frozen=True)
class ChatPlan:
    """How a method answers a chat: ``llm`` continues ``prompt`` (messages, or raw text for
    a model trained on raw text) until one of ``stop``; ``applied`` says what personalized it
    (shown to the caller). ``strip``: the whitespace around the text is the format's, not the
    answer's (FSPO's sections), so an answer is whole before it is given (not streamed)."""

    llm: LLM
    prompt: Prompt
    stop: tuple[str, ...] = ()
    applied: dict[str, Any] = field(default_factory=dict)
    strip: bool = False

    def finish(self, text: str) -> str:
        """A generated text as the answer."""
        return text.strip() if self.strip else text

    def sampling(self, params: SamplingParams) -> SamplingParams:
        """``params`` with the plan's stops added."""
        return replace(params, stop=tuple(dict.fromkeys((*params.stop, *self.stop))))


def last_user_text(messages: Sequence[Message]) -> str:
    """The text of the last user message (what a personalized answer responds to)."""
    for m in reversed(messages):
        if m.get("role") == "user":
            content = m.get("content")
            return content if isinstance(content, str) else ""
    return ""


def check_questions(questions: Sequence[Any]) -> list[Opinion]:
    """Questions as opinions; anything else is the caller's data error."""
    out = []
    for i, q in enumerate(questions):
        if not isinstance(q, Opinion):
            raise DataError(f"question {i} is a {type(q).__name__}, not an Opinion",
                            field="questions")
        if len(q.options) < 2:
            raise DataError(f"question {i} has {len(q.options)} option(s); at least 2 needed",
                            field="options")
        out.append(q)
    return out


def check_user(user: Any, min_opinions: int = 0) -> User:
    if not isinstance(user, User):
        raise DataError(f"fit takes a User, got {type(user).__name__}", field="user")
    if len(user.opinions) < min_opinions:
        raise DataError(f"user {user.user_id!r} has {len(user.opinions)} opinions; this method "
                        f"needs at least {min_opinions}", field="opinions")
    return user
