"""The benchmark: every method, through the one protocol, on the same users and questions.

Protocol ``opinionqa-individual`` (docs/benchmark.md): per user, shuffle the opinions with a
seed derived from (seed, user_id); the first 20 are the user's past opinions (what every method
fits on), the next 30 (or all that remain) the test questions; users with fewer than 25
opinions are skipped and counted. Accuracy is macro-averaged over users with paired bootstrap
CIs, in one report for every method (:mod:`personalign.bench.report`). Protocol
``globalopinionqa-individual`` splits countries the same way; what each protocol reads is in
:mod:`personalign.bench.protocols`.

A run folder (:mod:`personalign.runtime.runs`) keeps one unit per (user, method), written
atomically as it finishes: a rerun resumes, a new method runs only itself, and a unit whose
user data or model changed stops the run (``force``: recompute it).

Users are independent: the driver checks what is done, then hands each user's missing units
to an executor (:mod:`personalign.runtime.executor`: this process, local worker processes or
Ray actors), whose workers save each unit as it finishes. Limits
(:mod:`personalign.runtime.budget`) stop a user's or the run's work between or inside units;
the report then covers the users whose every unit is done and lists the stopped ones.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

from tqdm.auto import tqdm

from personalign.bench.protocols import OPINIONQA, load_users, question_metrics
from personalign.methods import (
    DEFAULT_METHODS, MethodSettings, build, label, method_class, split_spec,
)
from personalign.runtime.budget import Allowance, BudgetExceeded, Limits, Spend, watch
from personalign.runtime.data.records import Opinion, User
from personalign.runtime.config import Config
from personalign.runtime.data.splits import protocol_order
from personalign.runtime.errors import ConfigError
from personalign.runtime.executor import ExecutorConfig, make_executor
from personalign.runtime.llm.factory import prepare_llm
from personalign.runtime.llm.types import ScoringMethod, usage_since
from personalign.runtime.models import machine
from personalign.runtime.personalizer import Personalizer, SharedModels
from personalign.runtime.runs import RunFolder, model_identity

PROTOCOL = OPINIONQA


@dataclass(frozen=True)
class UserSplit:
    """What a method may fit on (``train``: the user with their past opinions only) and the
    questions it is tested on."""

    train: User
    test: tuple[Opinion, ...]

    @property
    def user_id(self) -> str:
        return self.train.user_id

    def rows(self) -> list[dict]:
        """The data this user's results depend on (their fingerprint)."""
        return [self.train.to_dict(), [q.to_dict() for q in self.test]]


def split_user(user: User, seed: int = 0, n_shots: int = 20, n_test: int = 30,
               min_opinions: int = 25) -> UserSplit | None:
    """The protocol's split, or None when the user has fewer than ``min_opinions``."""
    if len(user.opinions) < min_opinions:
        return None
    ops = protocol_order(user, seed)
    train = User(user.user_id, dict(user.profile), tuple(ops[:n_shots]), user.description)
    return UserSplit(train, tuple(ops[n_shots:n_shots + n_test]))


@dataclass
class BenchConfig(Config):
    """One benchmark run. Every field is a run-wide input except ``out``, ``users``,
    ``user_ids``, ``force``, ``execution`` and ``limits``."""

    data: str
    out: str
    protocol: Literal["opinionqa-individual", "globalopinionqa-individual"] = PROTOCOL
    users: int | None = 20                    # the first N eligible users in file order
    user_ids: list[str] | None = None         # or exactly these
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    settings: MethodSettings = field(default_factory=MethodSettings)
    n_shots: int = 20
    n_test: int = 30
    min_opinions: int = 25
    # The models: SharedModels' defaults, the one definition of the default models.
    task_model: str = SharedModels.task
    optimizer_model: str = SharedModels.optimizer
    embedder: str = SharedModels.embedder
    scoring: ScoringMethod = SharedModels.scoring
    force: bool = False
    execution: ExecutorConfig = field(default_factory=ExecutorConfig)
    limits: Limits = field(default_factory=Limits)

    def validate(self) -> None:
        if not self.methods:
            raise ConfigError("no methods to run")
        for spec in self.methods:
            method_class(split_spec(spec)[0])
        if self.n_shots < 1 or self.n_test < 1 or self.min_opinions < self.n_shots + 1:
            raise ConfigError("need n_shots >= 1, n_test >= 1 and min_opinions > n_shots")
        if self.users is not None and self.users < 1:
            raise ConfigError(f"users must be >= 1, got {self.users}")

    @property
    def seed(self) -> int:
        return self.settings.seed

    def shared_models(self) -> SharedModels:
        return SharedModels(self.task_model, self.optimizer_model, self.embedder, self.scoring)

    def run_inputs(self, models: SharedModels) -> dict[str, Any]:
        """Run-wide inputs: the protocol, its split, the models and the methods' settings."""
        return {"protocol": [self.protocol, self.n_shots, self.n_test, self.min_opinions],
                "settings": asdict(self.settings),
                "models": {k: model_identity(v) for k, v in models.identity().items()}}


def method_inputs(spec: str, method: Personalizer) -> str | list:
    """A method's own identity: its spec (with the contents digest of a model folder it
    names) and its resolved parameters, so that a changed default is a changed input. A
    method without parameters is its spec alone, as in units saved before parameters
    counted."""
    name, arg = split_spec(spec)
    named = spec if arg is None else f"{name}:{model_identity(arg)}"
    params = method.identity()
    return [named, params] if params else named


def select_users(users: Sequence[User], cfg: BenchConfig) -> tuple[list[UserSplit], list[str]]:
    """Protocol splits of the chosen users (file order) and the ids of skipped users."""
    if cfg.user_ids:
        missing = set(cfg.user_ids) - {u.user_id for u in users}
        if missing:
            raise ConfigError(f"user id(s) not in {cfg.data}: {', '.join(sorted(missing))}")
        users = [u for u in users if u.user_id in set(cfg.user_ids)]
    splits, skipped = [], []
    for u in users:
        s = split_user(u, cfg.seed, cfg.n_shots, cfg.n_test, cfg.min_opinions)
        if s is None:
            skipped.append(u.user_id)
        elif cfg.users is None or len(splits) < cfg.users:
            splits.append(s)
    return splits, skipped


@dataclass
class UnitResult:
    """One method on one user (a unit): a row per answered question, what the fit did
    (``Personalizer.fit_report``), the LLM usage the unit added by model, and its seconds.
    Saved as :meth:`to_dict` in the unit's file."""

    rows: list[dict[str, Any]]
    fit: dict[str, Any]
    usage: dict[str, dict]
    seconds: float
    machine: str | None = None  # runtime.models.machine(); None in units saved before it

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "fit": self.fit, "usage": self.usage, "seconds": self.seconds,
                "machine": self.machine}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "UnitResult":
        return cls(data["rows"], data["fit"], data["usage"], data["seconds"],
                   data.get("machine"))

    @property
    def spend(self) -> Spend:
        return Spend.of_usage(self.usage, self.seconds)


@dataclass
class UserOutcome:
    """What a worker did for one user: the units it has (run now or saved before), the limit
    that stopped it (or None) and how many units it ran."""

    user_id: str
    results: dict[str, UnitResult]
    stopped: str | None
    ran: int


def run_method(spec: str, split: UserSplit, models: SharedModels,
               settings: MethodSettings, protocol: str = PROTOCOL) -> UnitResult:
    """Fit one method on one user's past opinions and answer their test questions."""
    start, before = time.perf_counter(), models.usage()
    method = build(spec, models, settings).fit(split.train)
    answers = method.predict(list(split.test))
    rows = []
    for i, (q, a) in enumerate(zip(split.test, answers)):
        row = {"protocol": protocol, "user_id": split.user_id, "qid": q.qid, "index": i,
               "method": spec, "choice": a.choice, "answer": q.answer,
               "n_options": len(q.options), "correct": a.correctness(q.answer),
               "logprobs": [round(x, 4) for x in a.logprobs],
               **question_metrics(q, a.choice, a.logprobs)}
        if a.prompt_index is not None:
            row["prompt_index"] = a.prompt_index
        rows.append(row)
    return UnitResult(rows, method.fit_report(), usage_since(models.usage(), before),
                      time.perf_counter() - start, machine())


def unit_name(split: UserSplit, spec: str) -> str:
    return f"{split.user_id}/{spec}"


def load_unit(run: RunFolder, unit: str, inputs: Any) -> UnitResult | None:
    """A unit saved before with these inputs, or None."""
    saved = run.load(unit, inputs)
    return None if saved is None else UnitResult.from_dict(saved)


@dataclass
class UserJob:
    """One user's units still to run, with what the user and the run spent before."""

    split: UserSplit
    specs: list[str]
    identities: dict[str, str]
    settings: MethodSettings
    run: RunFolder
    limits: Limits
    user_spent: Spend
    run_spent: Spend
    deadline: float | None
    protocol: str = PROTOCOL


def run_user(models: SharedModels, job: UserJob) -> UserOutcome:
    """A worker's part: run a user's units in order, saving each as it finishes. A limit
    reached stops the user before or inside a unit (that unit is not saved)."""
    results, stopped, ran, spent = {}, None, 0, Spend()
    for spec in job.specs:
        unit, inputs = unit_name(job.split, spec), [job.split.rows(), job.identities[spec]]
        result = load_unit(job.run, unit, inputs)  # saved by a worker lost before it returned
        if result is None:
            allowance = Allowance.remaining(job.limits, job.user_spent + spent,
                                            job.run_spent + spent, job.deadline)
            stopped = allowance.exhausted()
            if stopped:
                break
            try:
                with watch(models, allowance):
                    result = run_method(spec, job.split, models, job.settings, job.protocol)
            except BudgetExceeded as e:
                stopped = e.reason
                break
            job.run.save(unit, result.to_dict(), inputs)
            ran += 1
            spent = spent + result.spend
        results[spec] = result
    return UserOutcome(job.split.user_id, results, stopped, ran)


@dataclass
class BenchResult:
    out: Path
    records: list[dict[str, Any]]
    summary: dict[str, Any]
    stopped: dict[str, str] = field(default_factory=dict)  # user id -> the limit reached


def run_benchmark(cfg: BenchConfig, users: Sequence[User] | None = None, *,
                  models: SharedModels | None = None, progress: bool = True) -> BenchResult:
    """Run (or resume) the benchmark and write its report folder. ``models``, when given,
    replace the config's model names (tests, notebooks) and need the in-process executor."""
    from personalign.bench.report import sum_usage, write_report

    if users is None:
        users = load_users(cfg.protocol, cfg.data)
    splits, skipped = select_users(users, cfg)
    if not splits:
        raise ConfigError(f"no user in {cfg.data} has {cfg.min_opinions} or more opinions")
    in_memory = models is not None
    if in_memory and (cfg.execution.kind != "local" or cfg.execution.workers > 1):
        raise ConfigError("in-memory models run in this process only; name the models by "
                          "spec to run on worker processes or Ray")
    if not in_memory:
        for spec in dict.fromkeys([cfg.task_model, cfg.optimizer_model]):
            prepare_llm(spec)
    models = models or cfg.shared_models()
    # a bad method argument fails before any work
    identities = {spec: method_inputs(spec, build(spec, models, cfg.settings))
                  for spec in cfg.methods}
    run = RunFolder.open(cfg.out, kind=f"bench {cfg.protocol}", inputs=cfg.run_inputs(models),
                         force=cfg.force)
    wall = time.time()
    deadline = wall + cfg.limits.run_seconds if cfg.limits.run_seconds else None
    # What is done already, read here so that changed inputs stop the run before any work.
    done: dict[str, dict[str, UnitResult]] = {}
    for split in splits:
        done[split.user_id] = {}
        for spec in cfg.methods:
            result = load_unit(run, unit_name(split, spec), [split.rows(), identities[spec]])
            if result is not None:
                done[split.user_id][spec] = result
    user_spent = {u: sum((r.spend for r in d.values()), Spend()) for u, d in done.items()}
    run_spent = sum(user_spent.values(), Spend())
    stopped: dict[str, str] = {}

    def jobs():
        """Users with units to run, pulled one at a time as workers free up."""
        for split in splits:
            todo = [s for s in cfg.methods if s not in done[split.user_id]]
            if not todo:
                continue
            spent = user_spent[split.user_id]
            reason = Allowance.remaining(cfg.limits, spent, run_spent, deadline).exhausted()
            if reason:
                stopped[split.user_id] = reason
                continue
            yield UserJob(split, todo, identities, cfg.settings, run, cfg.limits, spent,
                          run_spent, deadline, cfg.protocol)

    ran = 0
    # initial=: a resumed run shows what is done at once (an update this early is not drawn)
    bar = tqdm(total=len(splits) * len(cfg.methods), desc="users x methods",
               initial=sum(len(d) for d in done.values()), disable=not progress,
               dynamic_ncols=True)

    def saved_since_start(path: Path) -> bool:
        # (a file older than this run holds a unit recomputed under force: not done yet)
        return path.exists() and path.stat().st_mtime >= wall

    def show_saved() -> None:
        """Workers save each unit as it finishes: the bar counts the units reported done and
        those saved since (only the files of units not yet reported are looked at)."""
        saved = 0
        for split in splits:
            reported = done[split.user_id]
            saved += len(reported) + sum(saved_since_start(run.unit_path(unit_name(split, spec)))
                                         for spec in cfg.methods if spec not in reported)
        if saved > bar.n:  # (no redraw otherwise: a log gets no line per second)
            bar.update(saved - bar.n)

    setup = (lambda: models) if in_memory else cfg.shared_models
    with make_executor(cfg.execution, setup) as executor:
        for _, out in executor.run(run_user, jobs(), on_wait=show_saved):
            user = out.user_id
            new = {s: r for s, r in out.results.items() if s not in done[user]}
            done[user].update(new)
            run_spent = run_spent + sum((r.spend for r in new.values()), Spend())
            if out.stopped:
                stopped[user] = out.stopped
            ran += out.ran
            show_saved()
            bar.set_postfix(user=user)
    bar.close()
    records, partial = [], []
    for split in splits:
        per_method = {spec: done[split.user_id][spec] for spec in cfg.methods
                      if spec in done[split.user_id]}
        if not per_method:
            continue
        # a user stopped by a limit (or a session's end) is in the report once every method
        # is done; until then only in summary.json, whose units `bench pool` can complete
        (records if len(per_method) == len(cfg.methods) else partial).append({
            "user_id": split.user_id, "n_test": len(split.test),
            "rows": [row for r in per_method.values() for row in r.rows],
            "fits": {s: r.fit for s, r in per_method.items() if r.fit},
            "usage": sum_usage([r.usage for r in per_method.values()]),
            "method_usage": {s: r.usage for s, r in per_method.items()},
            "seconds": {s: round(r.seconds, 2) for s, r in per_method.items()},
            "wall_s": round(sum(r.seconds for r in per_method.values()), 2),
            "machines": {s: r.machine or "not recorded" for s, r in per_method.items()}})
    meta = {"protocol": cfg.protocol, "data": cfg.data,
            "methods": [{"spec": s, "label": label(s)} for s in cfg.methods],
            "models": models.identity(), "settings": asdict(cfg.settings), "seed": cfg.seed,
            "split": {"n_shots": cfg.n_shots, "n_test": cfg.n_test,
                      "min_opinions": cfg.min_opinions,
                      "order": "protocol_order: derive_seed(seed, user_id)"},
            "threads": os.environ.get("PERSONALIGN_THREADS", ""),
            "execution": cfg.execution.describe(), "limits": cfg.limits.to_dict(),
            "stopped_users": {u: stopped[u] for u in sorted(stopped)},
            "skipped_users": skipped, "units_run_this_session": ran,
            "this_session_wall_s": round(time.time() - wall, 1),
            "notes": [f"Fermi/OPRO preset: {cfg.settings.preset}"
                      + (" (smaller T and K than the paper)"
                         if cfg.settings.preset != "paper" else "") + "."]
            + [note for note in (method_class(split_spec(s)[0]).report_note(cfg.settings)
                                 for s in cfg.methods) if note]}
    summary = write_report(cfg.out, records, meta, partial)
    return BenchResult(Path(cfg.out), records, summary, meta["stopped_users"])


#: what the main job runs: the baselines, Fermi, and Fermi with retrieved opinions
# The demo's methods: what fits its 4-minute budget with Qwen 1.5B on 2 cores (README).
DEMO_METHODS = ("vanilla", "profile", "fermi")


def run_demo(users: Sequence[User] | None = None, path: str | Path | None = None, *,
             out: str | Path = "runs/demo", preset: str = "tiny",
             methods: Sequence[str] = DEMO_METHODS, n_users: int | None = None,
             seed: int = 0, models: SharedModels | None = None, workers: int | None = None,
             progress: bool = True) -> BenchResult:
    """The main job: the demo methods on the project's sample users (or the users of
    ``path``) with the embedded models. Print ``result.summary["per_method_md"]``.

    ``workers``: processes running one user each (None: 2 when the machine has 2 cores or
    more, 1 with in-memory ``models``)."""
    if users is None and path is None:
        from personalign.runtime.data.sample import load_sample_users, sample_users_path

        users, path = load_sample_users(), sample_users_path()
    if users is None:
        users = load_users(PROTOCOL, path)
    if workers is None:
        workers = 1 if models is not None else min(2, os.cpu_count() or 1)
    cfg = BenchConfig(data=str(path or "<in-memory users>"), out=str(out), users=n_users,
                      methods=list(methods), settings=MethodSettings(seed=seed, preset=preset),
                      execution=ExecutorConfig(workers=workers))
    return run_benchmark(cfg, users, models=models, progress=progress)
