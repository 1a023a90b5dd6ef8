"""DSPy's prompt optimizers as benchmark peers of Fermi, fitted per user: ``dspy-gepa``
(GEPA's reflective instruction evolution), ``dspy-miprov2`` (MIPROv2, instructions only, no
demos) and ``dspy-bootstrap`` (demonstrations picked by BootstrapFewShot with random search).

Benchmark-only, behind the optional extra ``personalign[peers]`` (``dspy[optuna]==3.4.1``):
this module imports DSPy only inside a fit or a prediction, so the core install never does.

**Same users, data, models.** Each peer fits on the user the benchmark gives every method
(the protocol's past opinions; Fermi fits on exactly these) and starts from Fermi's initial
prompt: the user's profile text followed by the task instruction. A DSPy program is one
``dspy.Predict`` of the signature (question, lettered answer choices) -> answer letter; DSPy's
chat adapter writes the prompt and parses the reply, falling back to its JSON adapter as it
does by default. The task model (and, for GEPA's reflection and MIPROv2's proposals, the
optimizer model) are the run's own LLM objects, served in this process on a loopback
OpenAI-compatible endpoint (:mod:`personalign.serving.openai_server`) that the fit or the
prediction starts and stops itself: every token DSPy spends is counted by those LLM objects,
per phase ``<peer>/score`` (the task model while optimizing), ``<peer>/optimize`` (the
optimizer model) and ``<peer>/predict``, as Fermi's are, and the run's limits apply. Each fit
also counts every request it made and its tokens with the run's call cache's hits included
(``counts.requests``, ``counts.requested_tokens``): peers that ask the same (their initial
program) share that cache, so this is what a peer costs alone.

**The metric** is whether the option the program names equals the user's answer (GEPA also gets
a sentence of feedback naming the person's choice). An answer DSPy cannot parse, or whose text
names no answer choice, counts as unparsed: the prediction has no choice and is read as a
uniform guess over the options (:class:`~personalign.runtime.personalizer.Answer`); the count
is reported (``failures.unparsed_answers`` of every fit, the report's "Unparsed" column).
An optimizer that stops on a reply of the optimizer model it cannot parse (MIPROv2's proposer
does not catch them) leaves the fit with the initial program (``failures.optimizer_errors``);
a fit that ends with the initial program, for whatever reason, counts as collapsed, as a Fermi
fit whose pool is its initial prompt does.

**Budget rule.** Each peer's optimizer gets at least the LLM calls Fermi spends per user at the
same preset. ``FermiPersonalizer.fit_calls`` bounds those from above: every candidate prompt
Fermi can score on every optimization opinion, ``(1 + T*S) * n_opt``, the pool scored on the
demonstration opinions, ``P * n_demo``, and every optimizer call with all retries,
``T * (1 + max_retries)`` (T iterations, S samples per iteration, P pool prompts; 94 calls for
20 opinions at ``quick``, 39 at ``tiny``, 702 at ``paper``). With B that bound (times
``budget_scale``):

- ``dspy-gepa``: ``max_metric_calls = B`` (each metric call is one task-model answer);
  reflection calls of the optimizer model come on top.
- ``dspy-miprov2``: every trial evaluates the full validation set (``minibatch=False``), and
  ``num_trials = ceil(B / |val|) - 1``, so with the default program's evaluation the trials
  make at least B task-model calls; ``num_candidates = T*S + 1`` instructions (Fermi's new
  prompts plus the initial one). Demonstration bootstrapping for the proposer and the
  proposals come on top.
- ``dspy-bootstrap``: ``num_candidate_programs = ceil(B / |val|) - 3`` (random search also
  evaluates the zero-shot, labels-only and unshuffled programs), at least 1; bootstrapping
  calls come on top. ``max_bootstrapped_demos = max_labeled_demos = 4`` (MIPROv2's
  defaults; DSPy tops bootstrapped demos up with labeled ones to 4 in all), not random
  search's own 16 labeled, which would put most past opinions in every prompt.

The instruction optimizers train and validate on all the user's opinions (GEPA's own default
without a validation set; their candidates carry no answers). Bootstrap's candidates carry
answered opinions as demonstrations, which would leak into a validation on the same opinions:
it takes them from Fermi's optimization part and validates on Fermi's demonstration part (the
``optimization_fraction`` split). The rule and each fit's numbers are in the report (its notes
and the optimizer table: ``budget_calls``, ``metric_calls`` where DSPy reports them).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import threading
from collections import Counter
from typing import Any, ClassVar, Sequence

from personalign.runtime.cost import CHARS_PER_TOKEN, PROMPT_TOKENS, Cost
from personalign.runtime.data.opinionqa import profile_text
from personalign.runtime.data.records import Opinion, User
from personalign.runtime.data.splits import optimization_split
from personalign.runtime.errors import ConfigError, PersonalignError
from personalign.runtime.llm.choice_parser import parse_choice
from personalign.runtime.personalizer import (
    Answer, Personalizer, SharedModels, check_questions,
)
from personalign.runtime.prompts import answer_text, choices_text, letter, profile_prompt

log = logging.getLogger(__name__)

EXTRA = "personalign[peers]"
DSPY_VERSION = "3.4.1"
TASK_ALIAS, OPTIMIZER_ALIAS = "task", "optimizer"
HTTP_LOGGER = "personalign.serving.http"  # the server's request log
ANSWER_DESC = "the letter of the answer choice this person would pick"
# for projections: DSPy's chat framing of a call, a written instruction, an answer
CHAT_OVERHEAD, ANSWER_TOKENS = 150, 15
# An unreachable number of tolerated errors: a reply DSPy cannot parse scores as a failure
# (and is counted) instead of ending the fit.
MANY_ERRORS = 10 ** 9


def _fermi(settings) -> tuple[Any, Any]:
    """Fermi's method class and the config it fits with under ``settings``: the budget and
    the optimization split follow them."""
    from personalign.methods import method_class  # the registry, which imports this module

    fermi = method_class("fermi")
    return fermi, fermi.settings_config(settings)


def _dspy():
    """DSPy, imported on first use (the extra), with nothing fetched from the network and its
    own response cache off (every call reaches the served LLM, whose cache counts hits)."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    if "DSPY_CACHEDIR" not in os.environ:
        from personalign.runtime import settings

        os.environ["DSPY_CACHEDIR"] = str(settings.home() / "dspy_cache")
    try:
        import dspy
    except ImportError as e:
        raise ConfigError(f"the DSPy peers need the optional extra: pip install '{EXTRA}' "
                          f"({e})") from None
    if dspy.__version__ != DSPY_VERSION:
        log.warning("DSPy %s is installed; the peers were written for %s", dspy.__version__,
                    DSPY_VERSION)
    # The optimizers' progress and each reply they cannot parse or that ran out of tokens
    # (counted, and reported) would flood a benchmark's log.
    for name, level in (("optuna", logging.WARNING), ("dspy", logging.ERROR),
                        ("dspy.utils.parallelizer", logging.CRITICAL),
                        ("dspy.teleprompt.bootstrap", logging.CRITICAL)):
        logging.getLogger(name).setLevel(level)
    return dspy


# ---------------------------------------------------------------------------- the endpoint
class _Stopped(PersonalignError):
    """A limit of the run was reached inside a served call (answered as HTTP 400)."""


class _Served:
    """One of the run's LLMs as the loopback server sees it: the same object (usage, cache,
    limits), every call counted under ``phase``; calls to one object are serialized."""

    def __init__(self, llm, phase: str, lock: threading.Lock, loopback: "Loopback"):
        self._llm, self.phase, self._lock, self._loopback = llm, phase, lock, loopback

    def __getattr__(self, name: str):
        return getattr(self._llm, name)

    def generate(self, prompts, params, **kw):
        from personalign.runtime.budget import BudgetExceeded

        if self._loopback.stopped is not None:
            raise _Stopped(self._loopback.stopped.reason)
        with self._lock, self._llm.phase(self.phase):
            usage = self._llm.usage
            before = usage.prompt_tokens + usage.completion_tokens
            try:
                out = self._llm.generate(prompts, params, **kw)
            except BudgetExceeded as e:  # a BaseException: the server would not answer
                self._loopback.stopped = e
                raise _Stopped(e.reason) from None
            spent = self._llm.usage.prompt_tokens + self._llm.usage.completion_tokens - before
            if not spent:  # answered by the call cache: what the request amounts to
                spent = sum(self._llm.count_tokens(_text(p)) for p in prompts) + sum(
                    self._llm.count_tokens(t) for texts in out for t in texts if t)
            self._loopback.requested["requests"] += len(prompts)
            self._loopback.requested["requested_tokens"] += spent
            return out


def _text(prompt) -> str:
    return prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)


class Loopback:
    """The run's task model (and optimizer model) served on a free loopback port for as long as
    the block runs, with DSPy LMs that talk to it::

        with Loopback(models, "dspy-gepa", optimizer=True) as lb:
            dspy_program(..., lm=lb.task_lm)

    A limit of the run reached inside a served call stops every later call at once and is
    raised again when the block ends (:meth:`raise_if_stopped` raises it sooner)."""

    def __init__(self, models: SharedModels, method: str, *, optimizer: bool,
                 task_phase: str = "score", task_max_tokens: int = 128,
                 optimizer_max_tokens: int = 512, timeout: float = 3600.0):
        self.models, self.method, self.with_optimizer = models, method, optimizer
        self.task_phase = task_phase
        self.task_max_tokens, self.optimizer_max_tokens = task_max_tokens, optimizer_max_tokens
        self.timeout = timeout
        self.stopped = None
        # every request served and its tokens, cache hits included (the tokens of a hit
        # counted by the tokenizer, without the chat template): what the method would spend
        # without the run's call cache, which methods asking the same share
        self.requested: Counter = Counter()
        self.url: str | None = None  # the endpoint's /v1 base while the block runs
        self.task_lm = self.optimizer_lm = None
        self._serving = None

    def __enter__(self) -> "Loopback":
        from personalign.serving.openai_server import create_openai_app, serve_in_thread

        dspy = _dspy()
        task = self.models.task_llm
        llms = {TASK_ALIAS: task}
        if self.with_optimizer:
            llms[OPTIMIZER_ALIAS] = self.models.optimizer_llm
        locks: dict[int, threading.Lock] = {}
        served = {alias: _Served(llm, f"{self.method}/"
                                 f"{self.task_phase if alias == TASK_ALIAS else 'optimize'}",
                                 locks.setdefault(id(llm), threading.Lock()), self)
                  for alias, llm in llms.items()}
        # The server logs a line per request: thousands in a fit, none of them news here.
        self._http_log = logging.getLogger(HTTP_LOGGER)
        self._http_level = self._http_log.level
        self._http_log.setLevel(logging.WARNING)
        self._serving = serve_in_thread(create_openai_app(served))
        self.url = url = self._serving.__enter__()

        def lm(alias: str, temperature: float, max_tokens: int):
            return dspy.LM(f"openai/{alias}", api_base=url, api_key="loopback", cache=False,
                           num_retries=0, temperature=temperature, max_tokens=max_tokens,
                           timeout=self.timeout)

        try:
            # The task model answers greedily (Fermi's scoring is its argmax); the optimizer
            # samples at Fermi's optimizer temperature.
            self.task_lm = lm(TASK_ALIAS, 0.0, self.task_max_tokens)
            if self.with_optimizer:
                self.optimizer_lm = lm(OPTIMIZER_ALIAS, 1.0, self.optimizer_max_tokens)
        except BaseException:
            self._serving.__exit__(None, None, None)
            self._http_log.setLevel(self._http_level)
            raise
        return self

    def raise_if_stopped(self) -> None:
        if self.stopped is not None:
            raise self.stopped

    def __exit__(self, *exc) -> None:
        for lm in (self.task_lm, self.optimizer_lm):
            if lm is not None:
                with contextlib.suppress(Exception):
                    lm.close()
        self._serving.__exit__(*exc)
        self._serving = None
        self._http_log.setLevel(self._http_level)
        if self.stopped is not None:
            raise self.stopped


# ---------------------------------------------------------------------------- DSPy pieces
def _signature(dspy, instruction: str):
    class MultipleChoice(dspy.Signature):
        question: str = dspy.InputField()
        choices: str = dspy.InputField(desc="the answer choices, lettered")
        answer: str = dspy.OutputField(desc=ANSWER_DESC)

    return MultipleChoice.with_instructions(instruction)


def _example(dspy, o: Opinion):
    return dspy.Example(question=o.question, choices=choices_text(o.options),
                        answer=letter(o.answer)).with_inputs("question", "choices")


def _counting_adapter(dspy, counts: Counter, task_model: str,
                      options: dict[str, tuple[str, ...]] | None = None, json: bool = False):
    """DSPy's chat adapter (its JSON fallback included; ``json``: its JSON adapter) counting,
    for every answer of the task model, whether it names an option: ``answers``, ``unparsed``
    (DSPy could not parse the reply, or its answer names no option of ``options[choices]``);
    ``chat_format_errors`` (replies the chat format failed on, JSON tried next) and
    ``optimizer_unparsed`` (replies of the optimizer model DSPy could not parse)."""
    from dspy.utils.exceptions import AdapterParseError

    options = options or {}

    class Counting(dspy.JSONAdapter if json else dspy.ChatAdapter):
        def __call__(self, lm, lm_kwargs, signature, demos, inputs):
            task = lm.model == task_model and "choices" in inputs
            try:
                out = super().__call__(lm, lm_kwargs, signature, demos, inputs)
            except AdapterParseError:
                counts["unparsed" if task else "optimizer_unparsed"] += 1
                counts["answers"] += task
                raise
            if task:
                named = options.get(inputs["choices"], ())
                counts["answers"] += len(out)
                counts["unparsed"] += sum(parse_choice(str(o.get("answer")), named) is None
                                          for o in out)
            return out

        def parse(self, signature, completion):
            try:
                return super().parse(signature, completion)
            except AdapterParseError:
                counts["chat_format_errors"] += not json
                raise

    return Counting()


class _Metric:
    """Whether the program's answer names the user's option (1.0 or 0.0); with ``feedback``,
    GEPA's score-and-feedback prediction."""

    def __init__(self, dspy, opinions: Sequence[Opinion], feedback: bool):
        self.dspy, self.feedback = dspy, feedback
        self.options = {(o.question, choices_text(o.options)): o.options for o in opinions}
        self.calls = 0

    def __call__(self, gold, pred, trace=None, pred_name=None, pred_trace=None):
        self.calls += 1
        options = self.options[(gold.question, gold.choices)]
        truth = "ABCDEFGHIJKLMNOPQRSTUVWXYZ".index(gold.answer)
        said = getattr(pred, "answer", None)
        choice = parse_choice(str(said), options) if said is not None else None
        score = float(choice == truth)
        if not self.feedback:
            return score
        if choice is None:
            text = (f"The answer {str(said)[:80]!r} names none of the answer choices; this "
                    f"person chose {answer_text(options, truth)}.")
        elif score:
            text = f"Correct: this person chose {answer_text(options, truth)}."
        else:
            text = (f"Wrong: the answer was {answer_text(options, choice)}, but this person "
                    f"chose {answer_text(options, truth)}.")
        return self.dspy.Prediction(score=score, feedback=text)


# ---------------------------------------------------------------------------- the methods
class DSPyPeer(Personalizer):
    """A DSPy optimizer fitted on one user (see the module docstring). Subclasses set
    ``optimizer_name`` and implement :meth:`_compile`."""

    depends_on = ("task",)
    min_opinions = 2
    uses_optimizer: ClassVar[bool] = True
    optimizer_name: ClassVar[str] = "abstract"

    def __init__(self, models: SharedModels, preset: str = "quick",
                 fermi: dict[str, Any] | None = None, seed: int = 0, budget_scale: float = 1.0,
                 task_max_tokens: int = 128, optimizer_max_tokens: int = 512):
        super().__init__(models)
        if not budget_scale > 0 or task_max_tokens < 1 or optimizer_max_tokens < 1:
            raise ConfigError(f"{self.name}: budget_scale must be > 0 and max tokens >= 1")
        # The config Fermi fits with at this preset: the budget is counted from it.
        from personalign.methods import MethodSettings

        self.fermi_method, self.fermi_config = _fermi(
            MethodSettings(preset=preset, seed=seed, fermi=dict(fermi or {})))
        self.preset, self.fermi, self.seed = preset, dict(fermi or {}), seed
        self.budget_scale = budget_scale
        self.task_max_tokens, self.optimizer_max_tokens = task_max_tokens, optimizer_max_tokens
        self.instruction = ""
        self.demos: list[dict[str, str]] = []
        self.report: dict[str, Any] = {}
        self.predict_counts: Counter = Counter()

    def identity(self) -> dict[str, Any]:
        # The budget is counted from Fermi's config at this preset, defaults included.
        return {**self.params(), "fermi_config": self.fermi_config.to_dict()}

    @classmethod
    def from_spec(cls, models: SharedModels, arg: str | None, settings) -> "DSPyPeer":
        if arg is not None:
            raise ConfigError(f"method {cls.name} takes no argument (got {cls.name}:{arg}); "
                              "its budget follows the preset")
        return cls(models, settings.preset, dict(settings.fermi), settings.seed)

    @classmethod
    def report_note(cls, settings) -> str | None:
        fermi, config = _fermi(settings)
        return (f"{cls.label}: DSPy {DSPY_VERSION} {cls.optimizer_name} per user on the "
                f"user's past opinions, from Fermi's initial prompt; budget at least Fermi's "
                f"LLM calls per user at preset {settings.preset} (upper bound "
                f"{fermi.fit_calls(config, 20)} for 20 opinions): {cls.budget_rule}; "
                f"unparsed answers are uniform guesses (column Unparsed).")

    budget_rule: ClassVar[str] = ""

    @classmethod
    def project(cls, shots: Sequence[Opinion], test: Sequence[Opinion], settings
                ) -> dict[str, Cost]:
        """Projected calls and tokens per phase for one user (``bench.projection``): the task
        model's answers while optimizing by the budget rule, the optimizer's calls as the
        optimizer makes them at most, one answer per test question. Tokens at 4 characters a
        token, DSPy's chat framing as a fixed overhead; an estimate, not a measurement."""
        method = cls.from_spec(SharedModels(), None, settings)  # loads nothing
        budget = method.budget(len(shots))

        def ask(qs: Sequence[Opinion], demos: int = 0) -> int:
            each = sum(len(o.question) + len(choices_text(o.options)) for o in qs) \
                // CHARS_PER_TOKEN // max(1, len(qs))
            return CHAT_OVERHEAD + PROMPT_TOKENS + (1 + demos) * (each + ANSWER_TOKENS)

        calls, optimizer = method.projected_calls(budget, len(shots))
        demos = method.projected_demos()
        out = {f"{cls.name}/score": Cost(calls, calls * ask(shots, demos))}
        if optimizer:
            reply = method.optimizer_max_tokens
            meta = CHAT_OVERHEAD + PROMPT_TOKENS + 3 * (ask(shots) + 40)  # examples, feedback
            out[f"{cls.name}/optimize"] = Cost(optimizer, optimizer * (meta + reply))
        out[f"{cls.name}/predict"] = Cost(len(test), len(test) * ask(test, demos))
        return out

    def projected_calls(self, budget: int, n_opinions: int) -> tuple[int, int]:
        """Task-model answers and optimizer calls of a fit with ``budget``, at most."""
        raise NotImplementedError

    def projected_demos(self) -> int:
        return 0

    def budget(self, n_opinions: int) -> int:
        return math.ceil(self.budget_scale * self.fermi_method.fit_calls(self.fermi_config,
                                                                        n_opinions))

    def fit(self, user: User) -> "DSPyPeer":
        user = self.check_data(user)
        dspy = _dspy()
        from dspy.utils.exceptions import AdapterParseError

        start = profile_prompt(profile_text(user.profile))  # as Fermi's fit starts
        counts: Counter = Counter()
        budget = self.budget(len(user.opinions))
        options = {choices_text(o.options): tuple(o.options) for o in user.opinions}
        with Loopback(self.models, self.name, optimizer=self.uses_optimizer,
                      task_max_tokens=self.task_max_tokens,
                      optimizer_max_tokens=self.optimizer_max_tokens) as lb:
            adapter = _counting_adapter(dspy, counts, lb.task_lm.model, options)
            student = dspy.Predict(_signature(dspy, start))
            quiet = io.StringIO()  # random search prints its progress
            with dspy.context(lm=lb.task_lm, adapter=adapter), \
                    contextlib.redirect_stdout(quiet):
                try:
                    program, report = self._compile(dspy, lb, student, list(user.opinions),
                                                    budget, counts)
                except AdapterParseError as e:
                    # A reply DSPy's optimizer could not read and did not catch (MIPROv2's
                    # proposer): the fit keeps the initial program, as a Fermi fit whose
                    # rewrites all failed keeps its initial prompt.
                    lb.raise_if_stopped()
                    log.warning("%s %s: the optimizer stopped on a reply it could not parse; "
                                "keeping the initial prompt", self.name, user.user_id)
                    program, report = student, {"optimizer_error": str(e)[:1000]}
                    counts["optimizer_errors"] += 1
                except Exception:
                    lb.raise_if_stopped()  # a limit, not the optimizer, ended the fit
                    raise
            lb.raise_if_stopped()
            if quiet.getvalue():
                log.debug("%s %s: %s", self.name, user.user_id, quiet.getvalue()[-2000:])
        predictor = program.predictors()[0]
        self.instruction = predictor.signature.instructions
        self.demos = [_demo_dict(d) for d in predictor.demos]
        # collapsed: the optimizer changed nothing (the report counts these users)
        self.report = {"initial_instruction": start, "instruction": self.instruction,
                       "demos": self.demos, **report,
                       "collapsed": self.instruction == start and not self.demos,
                       "counts": {"budget_calls": budget, **report.get("counts", {}),
                                  "fit_answers": counts["answers"], **lb.requested},
                       "failures": {"fit_unparsed_answers": counts["unparsed"],
                                    "chat_format_errors": counts["chat_format_errors"],
                                    "optimizer_unparsed": counts["optimizer_unparsed"],
                                    "optimizer_errors": counts["optimizer_errors"]}}
        self.predict_counts = Counter()
        self.user_id = user.user_id
        return self

    def _compile(self, dspy, lb: Loopback, student, opinions: list[Opinion], budget: int,
                 counts: Counter) -> tuple[Any, dict[str, Any]]:
        """The optimized program and what to report of the optimization."""
        raise NotImplementedError

    def _program(self, dspy):
        program = dspy.Predict(_signature(dspy, self.instruction))
        program.demos = [dspy.Example(**d).with_inputs("question", "choices")
                         for d in self.demos]
        return program

    def predict(self, questions: Sequence[Opinion]) -> list[Answer]:
        self._require_fitted()
        questions = check_questions(questions)
        dspy = _dspy()
        from dspy.utils.exceptions import AdapterParseError

        counts: Counter = Counter()
        options = {choices_text(q.options): tuple(q.options) for q in questions}
        answers = []
        with Loopback(self.models, self.name, optimizer=False, task_phase="predict",
                      task_max_tokens=self.task_max_tokens) as lb:
            program = self._program(dspy)
            adapter = _counting_adapter(dspy, counts, lb.task_lm.model, options)
            with dspy.context(lm=lb.task_lm, adapter=adapter):
                for q in questions:
                    try:
                        said = program(question=q.question, choices=choices_text(q.options)
                                       ).answer
                    except AdapterParseError:
                        said = None
                    except Exception:
                        lb.raise_if_stopped()
                        raise
                    choice = parse_choice(str(said), q.options) if said is not None else None
                    if choice is None:  # read as a uniform guess (Answer's rule)
                        logprobs = [-math.log(len(q.options))] * len(q.options)
                    else:
                        logprobs = [0.0 if i == choice else -math.inf
                                    for i in range(len(q.options))]
                    answers.append(Answer(choice, logprobs, prompt=self.instruction,
                                          shots=[d["question"] for d in self.demos]))
        self.predict_counts.update(counts)
        self.predict_counts.update(lb.requested)
        return answers

    def system_prompt(self, query: str) -> str | None:
        if not self.demos:
            return self.instruction
        shown = [f"Question: {d.get('question', '')}\nAnswer choices: {d.get('choices', '')}\n"
                 f"Answer: {d.get('answer', '')}" for d in self.demos]
        return "\n\n".join([self.instruction, "This person answered these questions before:",
                             *shown])

    def fit_report(self) -> dict[str, Any]:
        """The instruction and demos found, the candidates scored, the budget, the answers DSPy
        could not parse (``unparsed_answers`` of the ``answers`` predicted since the fit,
        ``fit_unparsed_answers`` of the ``fit_answers`` while optimizing), and the
        ``requests`` made and their ``requested_tokens``, cache hits included."""
        if not self.report:
            return {}
        fit, predicted = self.report["counts"], self.predict_counts
        return {**self.report,
                "counts": {**fit, "answers": predicted["answers"],
                           **{k: fit.get(k, 0) + predicted[k]
                              for k in ("requests", "requested_tokens")}},
                "failures": {"unparsed_answers": self.predict_counts["unparsed"],
                             **self.report["failures"],
                             "chat_format_errors": self.report["failures"]["chat_format_errors"]
                             + self.predict_counts["chat_format_errors"]}}

    def state(self) -> dict[str, Any]:
        return {"instruction": self.instruction, "demos": list(self.demos)}

    def set_state(self, state: dict[str, Any]) -> None:
        self.instruction = state["instruction"]
        self.demos = [dict(d) for d in state["demos"]]


def _demo_dict(demo) -> dict[str, str]:
    d = demo.toDict() if hasattr(demo, "toDict") else dict(demo)
    return {k: str(d[k]) for k in ("question", "choices", "answer") if k in d}


class DSPyGEPA(DSPyPeer):
    name, label = "dspy-gepa", "DSPy GEPA"
    optimizer_name = "GEPA"
    budget_rule = "max_metric_calls = B"

    def projected_calls(self, budget: int, n_opinions: int) -> tuple[int, int]:
        # one reflection per iteration; an iteration answers a minibatch of 3 twice
        return budget, max(1, (budget - n_opinions) // 6)

    def _compile(self, dspy, lb, student, opinions, budget, counts):
        from dspy.teleprompt.gepa.instruction_proposal import InstructionProposer

        examples = [_example(dspy, o) for o in opinions]
        metric = _Metric(dspy, opinions, feedback=True)
        # GEPA's default proposer (its JSON adapter), counting the replies it cannot parse
        proposer = InstructionProposer(adapter=_counting_adapter(dspy, counts, "", json=True))
        optimizer = dspy.GEPA(metric=metric, max_metric_calls=budget,
                              reflection_lm=lb.optimizer_lm, instruction_proposer=proposer,
                              num_threads=1, seed=self.seed, track_stats=True)
        program = optimizer.compile(student, trainset=examples, valset=examples)
        result = getattr(program, "detailed_results", None)
        report: dict[str, Any] = {"counts": {"metric_calls": metric.calls}}
        if result is not None:
            report["candidates"] = [
                {"instruction": c.predictors()[0].signature.instructions, "val_score": s}
                for c, s in zip(result.candidates, result.val_aggregate_scores)]
            report["counts"].update(candidates=len(result.candidates),
                                    full_val_evals=result.num_full_val_evals or 0)
            if result.total_metric_calls is not None:
                report["counts"]["metric_calls"] = result.total_metric_calls
        return program, report


class DSPyMIPROv2(DSPyPeer):
    name, label = "dspy-miprov2", "DSPy MIPROv2"
    optimizer_name = "MIPROv2 (instructions only, no demos)"
    budget_rule = ("num_trials = ceil(B / |val|) - 1 full evaluations, num_candidates = T*S + 1 "
                   "instructions")

    def projected_calls(self, budget: int, n_opinions: int) -> tuple[int, int]:
        # full evaluations and the demo sets bootstrapped for the proposer (all but the
        # zero-shot and labels-only sets, each running over the opinions at most); proposals:
        # one per candidate, the data summary (a call per 10 opinions and one more), the
        # program description (2)
        trials = self.trials(budget, n_opinions)
        return n_opinions * (1 + trials + max(0, self.candidates() - 2)), \
            self.candidates() + math.ceil(n_opinions / 10) + 1 + 2

    def trials(self, budget: int, n_val: int) -> int:
        return max(1, math.ceil(budget / n_val) - 1)

    def candidates(self) -> int:
        cfg = self.fermi_config
        return max(2, cfg.iterations * cfg.replies_per_iteration + 1)

    def _compile(self, dspy, lb, student, opinions, budget, counts):
        examples = [_example(dspy, o) for o in opinions]
        metric = _Metric(dspy, opinions, feedback=False)
        trials, candidates = self.trials(budget, len(examples)), self.candidates()
        optimizer = dspy.MIPROv2(metric=metric, prompt_model=lb.optimizer_lm,
                                 task_model=lb.task_lm, max_bootstrapped_demos=0,
                                 max_labeled_demos=0, auto=None, num_candidates=candidates,
                                 num_threads=1, max_errors=MANY_ERRORS, seed=self.seed,
                                 verbose=False)
        program = optimizer.compile(student, trainset=examples, valset=examples,
                                    num_trials=trials, minibatch=False)
        report: dict[str, Any] = {"counts": {"metric_calls": metric.calls, "trials": trials,
                                             "instruction_candidates": candidates}}
        scored = getattr(program, "candidate_programs", None) or []
        report["candidates"] = [
            {"instruction": c["program"].predictors()[0].signature.instructions,
             "val_percent": c.get("score")} for c in scored if "program" in c]
        return program, report


class DSPyBootstrap(DSPyPeer):
    name, label = "dspy-bootstrap", "DSPy Bootstrap"
    optimizer_name = "BootstrapFewShotWithRandomSearch (demos)"
    uses_optimizer = False
    budget_rule = ("num_candidate_programs = ceil(B / |val|) - 3 (at least 1), demos from "
                   "Fermi's optimization part, validated on its demonstration part")

    def __init__(self, models: SharedModels, preset: str = "quick",
                 fermi: dict[str, Any] | None = None, seed: int = 0, budget_scale: float = 1.0,
                 task_max_tokens: int = 128, optimizer_max_tokens: int = 512,
                 max_bootstrapped_demos: int = 4, max_labeled_demos: int = 4):
        super().__init__(models, preset, fermi, seed, budget_scale, task_max_tokens,
                         optimizer_max_tokens)
        if max_bootstrapped_demos < 1 or max_labeled_demos < 0:
            raise ConfigError(f"{self.name}: max_bootstrapped_demos must be >= 1 and "
                              "max_labeled_demos >= 0")
        self.max_bootstrapped_demos, self.max_labeled_demos = (max_bootstrapped_demos,
                                                               max_labeled_demos)

    def projected_calls(self, budget: int, n_opinions: int) -> tuple[int, int]:
        # the candidates' evaluations and their bootstrapping over the training part (all but
        # the zero-shot and labels-only programs), at most
        train, val = optimization_split([None] * n_opinions,
                                        self.fermi_config.optimization_fraction)
        n_val = len(val) or n_opinions
        n = self.candidate_programs(budget, n_val)
        return n_val * (3 + n) + len(train) * (1 + n), 0

    def projected_demos(self) -> int:
        return max(self.max_bootstrapped_demos, self.max_labeled_demos)

    def candidate_programs(self, budget: int, n_val: int) -> int:
        return max(1, math.ceil(budget / n_val) - 3)

    def _compile(self, dspy, lb, student, opinions, budget, counts):
        train, val = optimization_split(opinions, self.fermi_config.optimization_fraction)
        trainset = [_example(dspy, o) for o in train]
        valset = [_example(dspy, o) for o in val] or trainset
        metric = _Metric(dspy, opinions, feedback=False)
        n = self.candidate_programs(budget, len(valset))
        optimizer = dspy.BootstrapFewShotWithRandomSearch(
            metric=metric, max_bootstrapped_demos=self.max_bootstrapped_demos,
            max_labeled_demos=self.max_labeled_demos, num_candidate_programs=n,
            num_threads=1, max_errors=MANY_ERRORS)
        program = optimizer.compile(student, trainset=trainset, valset=valset)
        scored = getattr(program, "candidate_programs", None) or []
        return program, {"counts": {"metric_calls": metric.calls, "candidate_programs": n},
                         "candidates": [{"seed": c.get("seed"), "val_percent": c.get("score"),
                                         "demos": len(c["program"].predictors()[0].demos)}
                                        for c in scored if "program" in c]}



PEERS = (DSPyGEPA, DSPyMIPROv2, DSPyBootstrap)
