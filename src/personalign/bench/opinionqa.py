"""Protocol ``opinionqa-individual``: Fermi and its baselines per real user (docs/benchmark.md).

Per user: shuffle the opinions with a seed derived from (seed, user_id); the first 20 are the
few-shot opinions U_opi, the next 30 (or all that remain) the test questions; users with fewer
than 25 opinions are skipped and counted. Every method answers the same test questions with
the same task model; accuracy is macro-averaged over users, with paired bootstrap CIs.

Runs are resumable: each finished user is written to ``<out>/users/<user_id>.json`` as it
completes, and a rerun with the same settings skips those users.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from personalign.fermi import baselines
from personalign.fermi.config import FermiConfig
from personalign.fermi.config import preset as fermi_preset
from personalign.fermi.optimizer import Fermi
from personalign.runtime.data.opinionqa import load_opinionqa, profile_text
from personalign.runtime.data.records import Opinion, User
from personalign.runtime.data.splits import protocol_order
from personalign.runtime.errors import ConfigError
from personalign.runtime.storage import atomic_write_json

log = logging.getLogger(__name__)

PROTOCOL = "opinionqa-individual"
METHODS = ("random", "vanilla", "profile", "fewshot", "opro", "fermi_norop", "fermi")
METHOD_LABELS = {"random": "Random (expected)", "vanilla": "Vanilla", "profile": "Profile prompt",
                 "fewshot": "Few-shot", "opro": "OPRO", "fermi_norop": "Fermi w/o RoP",
                 "fermi": "Fermi"}


@dataclass(frozen=True)
class UserSplit:
    user: User
    shots: tuple[Opinion, ...]
    test: tuple[Opinion, ...]


def split_user(user: User, seed: int = 0, n_shots: int = 20, n_test: int = 30,
               min_opinions: int = 25) -> UserSplit | None:
    """The protocol's split, or None when the user has fewer than ``min_opinions``."""
    if len(user.opinions) < min_opinions:
        return None
    ops = protocol_order(user, seed)
    return UserSplit(user, tuple(ops[:n_shots]), tuple(ops[n_shots:n_shots + n_test]))


def parse_methods(spec: str | Sequence[str]) -> list[str]:
    names = [m.strip() for m in (spec.split(",") if isinstance(spec, str) else spec) if m.strip()]
    if names == ["all"] or not names:
        return list(METHODS)
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(METHODS)}")
    return [m for m in METHODS if m in names]  # canonical order


@dataclass
class BenchConfig:
    data: str
    out: str
    users: int | None = 20
    user_ids: list[str] | None = None
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    preset: str = "quick"
    seed: int = 0
    n_shots: int = 20
    n_test: int = 30
    min_opinions: int = 25
    fewshot_k: int = 3
    fewshot_retriever: str = "embeddings"
    task_model: str = "gemma3-270m"
    optimizer_model: str = "smollm2-135m-instruct"
    embedder: str = "all-minilm-l6-v2"
    fermi_overrides: dict[str, Any] = field(default_factory=dict)

    def fermi_config(self) -> FermiConfig:
        return fermi_preset(self.preset, seed=self.seed, embedder=self.embedder,
                            **self.fermi_overrides)

    def signature(self) -> dict[str, Any]:
        """What must match for a rerun to reuse finished users (not the user count)."""
        d = asdict(self)
        for k in ("out", "users", "user_ids"):
            d.pop(k)
        d["data"] = str(Path(self.data).resolve())
        d["fermi_config"] = self.fermi_config().to_dict()
        return d


def _usage(llm) -> dict:
    return llm.usage.as_dict() if llm is not None else {}


def _diff(after: dict, before: dict) -> dict:
    out = {}
    for k, v in after.items():
        if isinstance(v, dict):
            out[k] = _diff(v, before.get(k, {}))
        else:
            out[k] = v - before.get(k, 0)
    return out


def _safe_name(user_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in user_id)


def run_user(split: UserSplit, cfg: BenchConfig, task_llm, optimizer_llm, embedder,
             progress: bool = False) -> dict[str, Any]:
    """Every chosen method on one user; returns the user's record (predictions, fits, usage)."""
    start = time.time()
    user, shots, test = split.user, list(split.shots), list(split.test)
    profile = profile_text(user.profile)
    scoring = cfg.fermi_config().scoring_method
    before = {"task": _usage(task_llm), "optimizer": _usage(optimizer_llm)}
    preds: dict[str, list] = {}
    extra: dict[str, list] = {}
    fits: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    for method in cfg.methods:
        tick = time.time()
        if method == "random":
            preds[method] = [None] * len(test)
            extra[method] = baselines.random_expected(test)
        elif method == "vanilla":
            with task_llm.phase("vanilla/test"):
                preds[method] = baselines.prompt_predictions(
                    task_llm, baselines.vanilla_prompt(), test, scoring)
        elif method == "profile":
            with task_llm.phase("profile/test"):
                preds[method] = baselines.prompt_predictions(
                    task_llm, baselines.profile_prompt(profile), test, scoring)
        elif method == "fewshot":
            with task_llm.phase("fewshot/test"):
                preds[method] = baselines.fewshot_predictions(
                    task_llm, shots, test, cfg.fewshot_k, cfg.fewshot_retriever, embedder,
                    scoring)
        seconds[method] = round(time.time() - tick, 2)
    fermi_methods = [m for m in ("fermi_norop", "fermi") if m in cfg.methods]
    for mode, wanted in (("opro", ["opro"] if "opro" in cfg.methods else []),
                         ("fermi", fermi_methods)):
        if not wanted:
            continue
        est = Fermi(cfg.fermi_config().with_options(mode=mode), task_llm, optimizer_llm,
                    embedder)
        tick = time.time()
        est.fit(shots, user.profile, user_id=user.user_id, progress=progress)
        seconds[f"{mode}_fit"] = round(time.time() - tick, 2)
        fits[mode] = {"pool": [p.to_dict() for p in est.pool],
                      **(est.result.to_dict() if est.result else {})}
        for method in wanted:
            use_rop = method == "fermi"
            tick = time.time()
            details = est.predict_details(test, use_rop=use_rop, phase=f"{method}/test")
            preds[method] = [d["choice"] for d in details]
            extra[method] = [d["prompt_index"] for d in details]
            seconds[method] = round(time.time() - tick, 2)
    rows, accuracy = [], {}
    for method in cfg.methods:
        correct = []
        for i, q in enumerate(test):
            pred = preds[method][i]
            if method == "random":
                c = extra[method][i]
            else:
                c = float(pred is not None and pred == q.answer)
            correct.append(c)
            row = {"user_id": user.user_id, "method": method, "qid": q.qid, "index": i,
                   "pred": pred, "gold": q.answer, "n_options": len(q.options), "correct": c}
            if method in ("fermi", "fermi_norop", "opro"):
                row["prompt_index"] = extra[method][i]
            rows.append(row)
        accuracy[method] = float(np.mean(correct)) if correct else float("nan")
    usage = {"task": _diff(_usage(task_llm), before["task"])}
    if optimizer_llm is not None and optimizer_llm is not task_llm:
        usage["optimizer"] = _diff(_usage(optimizer_llm), before["optimizer"])
    return {"user_id": user.user_id, "n_shots": len(shots), "n_test": len(test),
            "accuracy": accuracy, "predictions": rows, "fits": fits, "usage": usage,
            "seconds": seconds, "wall_s": round(time.time() - start, 2)}


@dataclass
class BenchResult:
    out: Path
    records: list[dict[str, Any]]
    summary: dict[str, Any]

    @property
    def markdown_table(self) -> str:
        return self.summary["per_method_md"]

    @property
    def markdown_ci_table(self) -> str:
        return self.summary["paired_md"]


def select_users(users: Sequence[User], cfg: BenchConfig) -> tuple[list[UserSplit], list[str]]:
    """Protocol splits of the chosen users (file order) and the ids of skipped users."""
    if cfg.user_ids:
        wanted = set(cfg.user_ids)
        missing = wanted - {u.user_id for u in users}
        if missing:
            raise ConfigError(f"user id(s) not in {cfg.data}: {', '.join(sorted(missing))}")
        users = [u for u in users if u.user_id in wanted]
    splits, skipped = [], []
    for u in users:
        s = split_user(u, cfg.seed, cfg.n_shots, cfg.n_test, cfg.min_opinions)
        if s is None:
            skipped.append(u.user_id)
            continue
        if cfg.users is None or len(splits) < cfg.users:
            splits.append(s)
    return splits, skipped


def run_benchmark(cfg: BenchConfig, users: Sequence[User] | None = None, *, task_llm=None,
                  optimizer_llm=None, embedder=None, progress: bool = True,
                  on_user: Callable[[dict], None] | None = None) -> BenchResult:
    """Run (or resume) the benchmark and write the report folder; returns its summary."""
    from personalign.bench.report import write_report

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    signature = cfg.signature()
    sig_path = out / "run.json"
    if sig_path.exists():
        old = json.loads(sig_path.read_text(encoding="utf-8"))
        if old.get("signature") != signature:
            changed = sorted(k for k in set(old.get("signature", {})) | set(signature)
                             if old.get("signature", {}).get(k) != signature.get(k))
            raise ConfigError(f"{out} holds a run with other settings ({', '.join(changed)}); "
                              "use another --out or the same settings to resume")
    else:
        atomic_write_json(sig_path, {"protocol": PROTOCOL, "signature": signature,
                               "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    if users is None:
        users = load_opinionqa(cfg.data)
    splits, skipped = select_users(users, cfg)
    user_dir = out / "users"
    records: list[dict[str, Any]] = []
    todo = []
    for s in splits:
        path = user_dir / f"{_safe_name(s.user.user_id)}.json"
        if path.exists():
            records.append(json.loads(path.read_text(encoding="utf-8")))
        else:
            todo.append((s, path))
    if records:
        log.info("resuming: %d finished users reused, %d to run", len(records), len(todo))
    wall = time.time()
    if todo:
        from personalign.runtime.embeddings import Embedder
        from personalign.runtime.llm.factory import load_llm

        if task_llm is None:
            task_llm = load_llm(cfg.task_model)
        needs_opt = any(m in cfg.methods for m in ("opro", "fermi", "fermi_norop"))
        if optimizer_llm is None and needs_opt:
            optimizer_llm = task_llm if cfg.optimizer_model == cfg.task_model \
                else load_llm(cfg.optimizer_model)
        if embedder is None:
            embedder = Embedder(cfg.embedder)
    bar = tqdm(total=len(splits), initial=len(records), desc="users", disable=not progress)
    for split, path in todo:
        bar.set_postfix(user=split.user.user_id)
        record = run_user(split, cfg, task_llm, optimizer_llm, embedder, progress=progress)
        atomic_write_json(path, record)
        records.append(record)
        if on_user:
            on_user(record)
        bar.update(1)
    bar.close()
    order = {s.user.user_id: i for i, s in enumerate(splits)}
    records.sort(key=lambda r: order.get(r["user_id"], len(order)))
    meta = {"protocol": PROTOCOL, "data": str(cfg.data), "preset": cfg.preset,
            "bench_config": asdict(cfg), "fermi_config": cfg.fermi_config().to_dict(),
            "models": {"task": cfg.task_model, "optimizer": cfg.optimizer_model,
                       "embedder": cfg.embedder,
                       "threads": os.environ.get("PERSONALIGN_THREADS", "")},
            "seeds": {"global": cfg.seed, "user_split": "derive_seed(seed, user_id)",
                      "optimizer": "derive_seed(seed, user_id, iteration, attempt)"},
            "skipped_users": skipped, "this_session_wall_s": round(time.time() - wall, 1),
            "users_run_this_session": len(todo)}
    summary = write_report(out, records, meta)
    return BenchResult(out, records, summary)


def run_demo(users: Sequence[User] | None = None, path: str | Path | None = None, *,
             out: str | Path = "runs/demo", preset: str = "quick", methods="all",
             n_users: int | None = None, seed: int = 0, progress: bool = True,
             task_llm=None, optimizer_llm=None, embedder=None) -> BenchResult:
    """The main job: Fermi and the baselines on the project's sample users (or the users of
    ``path``) with the embedded models and the quick preset. Returns the result; print
    ``result.markdown_table`` (and ``markdown_ci_table``)."""
    if users is None and path is None:
        try:
            from personalign.runtime.data.sample import load_sample_users, sample_users_path

            users, path = load_sample_users(), sample_users_path()
        except ImportError as e:  # pragma: no cover - sample data lives in another area
            raise ConfigError("no sample users available; pass a data path") from e
    if users is None:
        users = load_opinionqa(path)
    cfg = BenchConfig(data=str(path or "<in-memory users>"), out=str(out), users=n_users,
                      methods=parse_methods(methods), preset=preset, seed=seed)
    return run_benchmark(cfg, users, task_llm=task_llm, optimizer_llm=optimizer_llm,
                         embedder=embedder, progress=progress)
