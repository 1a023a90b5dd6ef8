"""The synthetic preference-data pipeline, resumable stage by stage.

Output folder::

    run.json           fingerprint of the inputs (config, users/questions files, models): a
                       rerun with other inputs is refused, or starts over with ``force``
    config.json        the run's configuration
    budget.json        LLM calls planned per stage (computed before any call)
    users.jsonl        synthetic users (initial descriptions)
    questions.jsonl    questions
    responses.jsonl    one line per finished question: its candidate responses
    labels/r0.jsonl    raw judge outcomes, one line per finished question (all users)
    labels/traits_rK.jsonl  persona traits proposed in refinement round K, one line per user
    labels/rK.jsonl    re-judged outcomes of the refined users after round K
    labels/<user>.json per user: pairs, judgments before/after refinement
    pairs_all.jsonl    every judged pair with its labels (dropped ones included)
    pairs.jsonl        the dataset: order-consistent pairs after refinement (PreferencePair rows)
    usage.json         LLM usage and wall time, summed over resumed runs
    card.json/card.md  the data card (:mod:`personalign.fspo.data.card`)

Every file is written to a temp file and renamed, or appended one finished unit per line, so an
interrupted run resumes where it stopped; the LLM-call cache makes repeated calls free anyway.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

from tqdm.auto import tqdm

from personalign.fspo.data.episodes import write_jsonl
from personalign.fspo.data.judge import (
    DEFAULT_CONSISTENCY, DEFAULT_JUDGE, JUDGE_PROMPT, Consistency, JudgeMethod, PairJob,
    PairwiseJudge,
)
from personalign.fspo.data.refine import RefineConfig, append_traits, propose_traits
from personalign.fspo.data.synthetic import (
    GeneratorSpec,
    Question,
    Response,
    dump_questions,
    elix_steers,
    generate_questions,
    generate_responses,
    load_questions,
    read_questions_jsonl,
    user_steers,
)
from personalign.fspo.data.users import SyntheticUser, dump_users, make_users
from personalign.runtime.config import Config
from personalign.runtime.data.records import PreferencePair
from personalign.runtime.data.splits import derive_seed
from personalign.runtime.data.validate import read_jsonl
from personalign.runtime.errors import ConfigError, DataError
from personalign.runtime.models import DATA_GENERATOR
from personalign.runtime.runs import RunFolder, file_digest, model_identity
from personalign.runtime.storage import atomic_write_json, safe_filename

log = logging.getLogger(__name__)

RUN_KIND = "fspo-data synth"


@dataclass
class SynthConfig(Config):
    domain: Literal["elix", "reviews", "roleplay"] = "elix"
    users: int = 20
    questions: int = 20              # generated questions (ignored with questions_file)
    questions_file: str | None = None
    users_file: str | None = None
    responses_per_question: int = 4  # non-ELIX steering: users drawn per question
    views: int = 4                   # views listed per question, one per steered response (0: none)
    pairs_per_question: int = 2      # pairs judged per user and question
    generators: list[str] = field(default_factory=lambda: [DATA_GENERATOR])
    temperatures: list[float] = field(default_factory=lambda: [0.8])
    judge_model: str = DEFAULT_JUDGE
    judge_method: JudgeMethod = "letter"
    consistency: Consistency = DEFAULT_CONSISTENCY
    max_tokens: int = 160
    refine: RefineConfig = field(default_factory=RefineConfig)
    seed: int = 0

    def validate(self) -> None:
        if len(self.temperatures) not in (1, len(self.generators)):
            raise ConfigError("give one temperature, or one per generator")

    def responses_per(self, n_levels: int = 5) -> int:
        return n_levels if self.domain == "elix" else self.responses_per_question


def plan_budget(cfg: SynthConfig, n_users: int | None = None,
                n_questions: int | None = None) -> dict[str, int]:
    """Upper bounds of LLM calls (generations + scored items) per stage, before any call."""
    u = n_users if n_users is not None else cfg.users
    q = n_questions if n_questions is not None else cfg.questions
    r = cfg.responses_per(5 if cfg.domain != "elix" else min(5, max(1, u)))
    pairs_per_user = q * min(cfg.pairs_per_question, r * (r - 1) // 2)
    budget = {
        "personas": u if cfg.domain == "roleplay" and not cfg.users_file else 0,
        "questions": 0 if cfg.questions_file else q,
        "responses": q * (r + (1 if cfg.views else 0)),
        "judge": u * PairwiseJudge.calls(pairs_per_user),
        "refine": u * RefineConfig.calls(pairs_per_user, cfg.refine),
    }
    budget["total"] = sum(budget.values())
    return budget


class SyntheticPipeline:
    """``run(out_dir)``: users -> questions -> responses -> labels (+ refinement) -> dataset.

    ``llms`` maps model specs to ready LLM objects (tests pass FakeLLMs); other specs are
    loaded with ``load_llm``.
    """

    def __init__(self, cfg: SynthConfig, llms: dict[str, Any] | None = None,
                 progress: bool = True):
        self.cfg = cfg
        self.llms = dict(llms or {})
        self.progress = progress

    # ------------------------------------------------------------------ models
    def llm(self, spec: str):
        if spec not in self.llms:
            from personalign.runtime.llm.factory import load_llm

            self.llms[spec] = load_llm(spec)
        return self.llms[spec]

    def generators(self) -> list[GeneratorSpec]:
        temps = self.cfg.temperatures * (len(self.cfg.generators) if len(self.cfg.temperatures)
                                         == 1 else 1)
        return [GeneratorSpec(self.llm(g), t, g) for g, t in zip(self.cfg.generators, temps)]

    def _usage(self) -> dict[str, Any]:
        out = {}
        for spec, llm in self.llms.items():
            out[spec] = llm.usage.as_dict()
        return out

    # ------------------------------------------------------------------ run
    def budget(self) -> dict[str, int]:
        n_q = self.cfg.questions
        if self.cfg.questions_file:
            n_q = len(load_questions(self.cfg.questions_file))
        return plan_budget(self.cfg, n_questions=n_q)

    def inputs(self) -> dict[str, Any]:
        """What the results depend on: the configuration, the contents of the users and
        questions files it names, the models (a local model folder by its contents) and the
        judge's prompt (labels asked another way are other labels)."""
        inputs: dict[str, Any] = {"config": self.cfg.to_dict(), "judge_prompt": JUDGE_PROMPT}
        for key in ("users_file", "questions_file"):
            path = getattr(self.cfg, key)
            if path:
                if not Path(path).is_file():
                    raise DataError("file not found", path=path)
                inputs[key] = file_digest(path)
        specs = sorted(set(self.cfg.generators) | {self.cfg.judge_model})
        inputs["models"] = [model_identity(spec) for spec in specs]
        return inputs

    def run(self, out_dir: str | Path, max_calls: int | None = None,
            on_budget: Callable[[dict[str, int]], None] | None = None,
            force: bool = False) -> dict[str, Any]:
        """Run, or resume a run of the same inputs in ``out_dir``; other inputs stop with a
        ConfigError naming what changed, or with ``force`` recompute every stage."""
        out = Path(out_dir)
        budget = self.budget()
        if on_budget:
            on_budget(budget)
        if max_calls is not None and budget["total"] > max_calls:
            raise ConfigError(f"planned LLM calls {budget['total']} exceed --max-calls "
                              f"{max_calls}; reduce users/questions/pairs or raise the budget")
        inputs = self.inputs()
        try:
            RunFolder.open(out, kind=RUN_KIND, inputs=inputs)
        except ConfigError:
            if not force or not out.is_dir():
                raise
            _remove_stage_files(out)  # other inputs: every stage is recomputed
            RunFolder.open(out, kind=RUN_KIND, inputs=inputs, force=True)
        (out / "labels").mkdir(exist_ok=True)
        atomic_write_json(out / "config.json", self.cfg.to_dict())
        atomic_write_json(out / "budget.json", budget)
        start = time.time()
        users = self._users(out)
        questions = self._questions(out)
        responses = self._responses(out, users, questions)
        self._labels(out, users, questions, responses)
        summary = self._assemble(out, users)
        self._record_usage(out, time.time() - start)
        return summary

    def _users(self, out: Path) -> list[SyntheticUser]:
        path = out / "users.jsonl"
        if path.exists():
            return [SyntheticUser.from_dict(o) for _, o in read_jsonl(path)]
        llm = self.llm(self.cfg.generators[0]) if self.cfg.domain == "roleplay" else None
        with _phase(llm, "personas"):
            users = make_users(self.cfg.domain, self.cfg.users, llm=llm, seed=self.cfg.seed,
                               users_file=self.cfg.users_file)
        dump_users(users, path)
        return users

    def _questions(self, out: Path) -> list[Question]:
        path = out / "questions.jsonl"
        if path.exists():
            return read_questions_jsonl(path)
        if self.cfg.questions_file:
            questions = load_questions(self.cfg.questions_file)
        else:
            llm = self.llm(self.cfg.generators[0])
            with _phase(llm, "questions"):
                questions = generate_questions(llm, self.cfg.domain, self.cfg.questions,
                                               self.cfg.seed)
        dump_questions(questions, path)
        return questions

    def _responses(self, out: Path, users: Sequence[SyntheticUser],
                   questions: Sequence[Question]) -> dict[str, list[Response]]:
        path = out / "responses.jsonl"
        done: dict[str, list[Response]] = {}
        if path.exists():
            for _, obj in read_jsonl(path):
                done[obj["qid"]] = [Response(**r) for r in obj["responses"]]
        todo = [q for q in questions if q.qid not in done]
        if todo:
            gens = self.generators()
            with open(path, "a", encoding="utf-8") as f:
                for q in tqdm(todo, desc="responses", disable=not self.progress):
                    if self.cfg.domain == "elix" and any(
                            u.attributes.get("level") for u in users):
                        steers = elix_steers(users, q.qid, self.cfg.seed)
                    else:
                        steers = user_steers(users, q.qid, self.cfg.seed,
                                             self.cfg.responses_per_question)
                    with _phases([g.llm for g in gens], "responses"):
                        rs = generate_responses(q, steers, gens, self.cfg.seed,
                                                self.cfg.max_tokens, self.cfg.views)
                    f.write(json.dumps({"qid": q.qid, "responses": [asdict(r) for r in rs]},
                                       ensure_ascii=False) + "\n")
                    f.flush()
                    done[q.qid] = rs
        return done

    def question_pairs(self, q: Question, rs: Sequence[Response]) -> list[tuple[Response,
                                                                                Response]]:
        """``pairs_per_question`` distinct response pairs of a question, drawn (and oriented)
        with a seed from (seed, question). Every user judges the same pairs, as in the
        released ELIX/Reviews data (one pair, several scorers); the judge's shared prefix is
        the user's description (``fspo.data.judge``)."""
        combos = list(itertools.combinations(range(len(rs)), 2))
        rng = random.Random(derive_seed(self.cfg.seed, q.qid, "pairs"))
        rng.shuffle(combos)
        out = []
        for a, b in combos[: self.cfg.pairs_per_question]:
            out.append((rs[a], rs[b]) if rng.random() < 0.5 else (rs[b], rs[a]))
        return out

    def _judge_stage(self, path: Path, judge: PairwiseJudge, users: Sequence[SyntheticUser],
                     descriptions: dict[str, str], jobs: dict[str, list[PairJob]],
                     desc: str) -> dict[str, list]:
        """Raw judge outcomes of ``users`` on every question's pairs: {user: [outcome, ...]}
        in question order. One line of ``path`` per finished question (resumable)."""
        done: dict[str, dict[str, list]] = {}
        if path.exists():
            for _, obj in read_jsonl(path):
                done[obj["qid"]] = obj["outcomes"]
        todo = [qid for qid in jobs if qid not in done]
        if todo:
            with open(path, "a", encoding="utf-8") as f:
                for qid in tqdm(todo, desc=desc, disable=not self.progress):
                    requests, owners = [], []
                    for u in users:
                        for job in jobs[qid]:
                            requests.append((descriptions[u.user_id], u.guidelines, job))
                            owners.append(u.user_id)
                    outcomes: dict[str, list] = {u.user_id: [] for u in users}
                    for owner, o in zip(owners, judge.score(requests)):
                        outcomes[owner].append(list(o))
                    f.write(json.dumps({"qid": qid, "outcomes": outcomes},
                                       ensure_ascii=False) + "\n")
                    f.flush()
                    done[qid] = outcomes
        return {u.user_id: [o for qid in jobs for o in done[qid][u.user_id]] for u in users}

    def _labels(self, out: Path, users: Sequence[SyntheticUser], questions: Sequence[Question],
                responses: dict[str, list[Response]]) -> None:
        if all((out / "labels" / f"{safe_filename(u.user_id)}.json").exists() for u in users):
            return
        judge_llm = self.llm(self.cfg.judge_model)
        judge = PairwiseJudge(judge_llm, self.cfg.judge_method, self.cfg.consistency)
        refine_llm = self.llm(self.cfg.generators[0])
        pairs = {q.qid: self.question_pairs(q, responses.get(q.qid, [])) for q in questions}
        text = {q.qid: q.text for q in questions}
        jobs = {qid: [PairJob(text[qid], x.text, y.text) for x, y in ps]
                for qid, ps in pairs.items()}
        flat_jobs = [j for qid in jobs for j in jobs[qid]]
        descriptions = {u.user_id: u.description for u in users}
        traits: dict[str, list[str]] = {u.user_id: [] for u in users}
        with _phase(judge_llm, "judge"):
            raw = self._judge_stage(out / "labels" / "r0.jsonl", judge, users, descriptions,
                                    jobs, "judge (both orders)")
        before = {uid: judge.finalize(o) for uid, o in raw.items()}
        current = dict(before)
        rounds_run = {u.user_id: 0 for u in users}
        for r in range(self.cfg.refine.rounds):
            path = out / "labels" / f"traits_r{r}.jsonl"
            proposed: dict[str, list[str]] = {}
            if path.exists():
                proposed = {o["user_id"]: o["traits"] for _, o in read_jsonl(path)}
            with open(path, "a", encoding="utf-8") as f, \
                    _phase(refine_llm, "refine"):
                for u in tqdm([u for u in users if u.user_id not in proposed],
                              desc=f"refine personas r{r}", disable=not self.progress):
                    new = propose_traits(refine_llm, flat_jobs, current[u.user_id],
                                         self.cfg.refine, u.user_id, r, traits[u.user_id])
                    f.write(json.dumps({"user_id": u.user_id, "traits": new},
                                       ensure_ascii=False) + "\n")
                    f.flush()
                    proposed[u.user_id] = new
            changed = [u for u in users if proposed.get(u.user_id)]
            if not changed:
                break
            for u in changed:
                traits[u.user_id] += proposed[u.user_id]
                descriptions[u.user_id] = append_traits(descriptions[u.user_id],
                                                        proposed[u.user_id])
                rounds_run[u.user_id] = r + 1
            with _phase(judge_llm, "refine"):
                raw = self._judge_stage(out / "labels" / f"r{r + 1}.jsonl", judge, changed,
                                        descriptions, jobs, f"re-judge r{r + 1}")
            for uid, o in raw.items():
                current[uid] = judge.finalize(o)
        triples = [(qid, x, y) for qid in jobs for x, y in pairs[qid]]
        for u in users:
            record = {
                "user_id": u.user_id, "description": u.description,
                "refined_description": descriptions[u.user_id], "traits": traits[u.user_id],
                "rounds_run": rounds_run[u.user_id],
                "pairs": [{"qid": qid, "x": x.rid, "y": y.rid, "before": b.to_dict(),
                           "after": a.to_dict()}
                          for (qid, x, y), b, a in zip(triples, before[u.user_id],
                                                       current[u.user_id])],
            }
            atomic_write_json(out / "labels" / f"{safe_filename(u.user_id)}.json", record)

    def _assemble(self, out: Path, users: Sequence[SyntheticUser]) -> dict[str, Any]:
        questions = {q.qid: q for q in read_questions_jsonl(out / "questions.jsonl")}
        responses = {r["rid"]: r for _, o in read_jsonl(out / "responses.jsonl")
                     for r in o["responses"]}
        by_id = {u.user_id: u for u in users}
        rows_all, kept = [], []
        for user in users:
            rec = json.loads((out / "labels" / f"{safe_filename(user.user_id)}.json").read_text())
            for p in rec["pairs"]:
                x, y = responses[p["x"]], responses[p["y"]]
                label = p["after"]["label"]
                row = {"user_id": user.user_id, "qid": p["qid"], "x": p["x"], "y": p["y"],
                       "label_before": p["before"]["label"], "label": label,
                       "p_x_before": p["before"]["p_x"], "p_x_after": p["after"]["p_x"],
                       "level": user.attributes.get("level"),
                       "level_x": x["meta"].get("level"), "level_y": y["meta"].get("level")}
                rows_all.append(row)
                if label is None:
                    continue
                chosen, rejected = (x, y) if label == 0 else (y, x)
                steer_user = by_id.get(rejected["meta"].get("steer_user", ""))
                kept.append(PreferencePair(
                    user_id=user.user_id, prompt=questions[p["qid"]].text,
                    chosen=chosen["text"], rejected=rejected["text"],
                    user_description=rec["refined_description"],
                    rejected_description=steer_user.description if steer_user else None,
                    meta={"domain": self.cfg.domain, "qid": p["qid"],
                          "chosen_rid": chosen["rid"], "rejected_rid": rejected["rid"],
                          "chosen_meta": chosen["meta"], "rejected_meta": rejected["meta"],
                          "p_chosen": p["after"]["p_x"] if label == 0
                          else 1 - p["after"]["p_x"],
                          "initial_description": rec["description"],
                          # ELIX: "easy" when exactly one response was written for the
                          # user's level (FSPO's easy/hard split), else "hard".
                          "difficulty": _difficulty(user, x, y),
                          "held_out_user": user.held_out}).to_dict())
        write_jsonl(rows_all, out / "pairs_all.jsonl")
        write_jsonl(kept, out / "pairs.jsonl")
        return {"users": len(users), "judged_pairs": len(rows_all), "kept_pairs": len(kept)}

    def _record_usage(self, out: Path, seconds: float) -> None:
        path = out / "usage.json"
        old = json.loads(path.read_text()) if path.exists() else {"runs": []}
        old["runs"].append({"wall_s": round(seconds, 1), "usage": self._usage()})
        old["wall_s_total"] = round(sum(r["wall_s"] for r in old["runs"]), 1)
        old["llm_calls_total"] = sum(u.get("calls", 0)
                                     for r in old["runs"] for u in r["usage"].values())
        atomic_write_json(path, old)


STAGE_FILES = ("users.jsonl", "questions.jsonl", "responses.jsonl", "pairs_all.jsonl",
               "pairs.jsonl", "usage.json", "card.json", "card.md")


def _remove_stage_files(out: Path) -> None:
    """Drop every stage's results (and nothing else in the folder) before a forced rerun."""
    for name in STAGE_FILES:
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "labels", ignore_errors=True)


def _difficulty(user: SyntheticUser, x: dict, y: dict) -> str | None:
    level = user.attributes.get("level")
    if not level:
        return None
    return "easy" if (x["meta"].get("level") == level) != (y["meta"].get("level") == level) \
        else "hard"


class _phase:
    """``with _phase(llm, name)`` that tolerates llm=None."""

    def __init__(self, llm, name: str):
        self.cm = llm.phase(name) if llm is not None else None

    def __enter__(self):
        return self.cm.__enter__() if self.cm else None

    def __exit__(self, *exc):
        return self.cm.__exit__(*exc) if self.cm else False


class _phases:
    """Phase attribution on several LLMs at once (the same object may appear twice)."""

    def __init__(self, llms, name: str):
        self.cms = [llm.phase(name) for llm in {id(x): x for x in llms}.values()]

    def __enter__(self):
        for cm in self.cms:
            cm.__enter__()

    def __exit__(self, *exc):
        for cm in reversed(self.cms):
            cm.__exit__(*exc)
        return False
