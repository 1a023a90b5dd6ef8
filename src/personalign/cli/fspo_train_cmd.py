"""`personalign fspo train` and `personalign fspo eval`: FSPO training and evaluation."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import get_args

import typer
from rich.console import Console
from rich.table import Table

from personalign.cli.config_options import config_options
from personalign.fspo.data.judge import (
    DEFAULT_CONSISTENCY, DEFAULT_JUDGE, Consistency, domain_guidelines,
)
from personalign.fspo.data.opinionqa_prefs import PROTOCOL as PREFS_PROTOCOL
from personalign.fspo.data.synthetic import PROTOCOL as SYNTHETIC_PROTOCOL
from personalign.fspo.train.config import FSPOTrainConfig
from personalign.runtime.errors import ConfigError, DataError

app = typer.Typer(no_args_is_help=True)
console = Console()


@app.command("train")
@config_options(FSPOTrainConfig, skip=("resume",))
def train_cmd(
    config: Path | None = typer.Option(None, "--config", "-c",
                                          help="YAML/JSON FSPOTrainConfig; options override it."),
    train: list[Path] | None = typer.Option(None, "--train", help="Training episodes "
                                               "(JSONL/parquet; repeatable)."),
    eval_: list[Path] | None = typer.Option(None, "--eval", help="Held-out users' episodes."),
    output_dir: str | None = typer.Option(None, "--output-dir", "-o"),
    zero_shot: bool = typer.Option(False, "--zero-shot", help="Pooled baseline: drop the shots "
                                   "from every prompt (train and eval)."),
    no_resume: bool = typer.Option(False, "--no-resume", help="Start over in output-dir."),
    overrides: dict | None = None,
):
    """Stage 1 SFT (chosen + rejected, completion-only) then summed-IPO/DPO; resumable.
    Every FSPOTrainConfig field is an option (see --help)."""
    from personalign.fspo.data.episodes import zero_shot_records
    from personalign.fspo.train.data import load_episodes
    from personalign.fspo.train.trainer import FSPOTrainer, peak_rss_mb

    cfg = FSPOTrainConfig.from_file(config) if config else FSPOTrainConfig()
    cfg = cfg.updated(**(overrides or {}),
                      train_files=[str(p) for p in train] if train else None,
                      eval_files=[str(p) for p in eval_] if eval_ else None,
                      output_dir=output_dir, resume=False if no_resume else None)
    if not cfg.train_files:
        raise ConfigError("no training episodes: pass --train FILE or set train_files")
    train_records = load_episodes(cfg.train_files)
    eval_records = load_episodes(cfg.eval_files) if cfg.eval_files else []
    if zero_shot:
        train_records, eval_records = (zero_shot_records(train_records),
                                       zero_shot_records(eval_records))
    start = time.time()
    trainer = FSPOTrainer(cfg, train_records=train_records, eval_records=eval_records)
    final = trainer.fit()
    console.print(f"[green]done[/] in {time.time() - start:.0f}s, peak memory "
                  f"{peak_rss_mb():.0f} MB: {final}")
    _print_last_metrics(Path(cfg.output_dir) / "metrics.jsonl")


def _print_last_metrics(path: Path) -> None:
    if not path.exists():
        return
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    evals = [r for r in rows if r.get("split") in ("eval", "summary")]
    if not evals:
        return
    table = Table("stage", "step", "split", "loss", "reward acc", "margin", "logp acc",
                  title="held-out users")
    for r in evals[-6:]:
        cells = [r.get(k, r.get(f"eval_{k}"))
                 for k in ("loss", "reward_accuracy", "reward_margin", "logp_accuracy")]
        table.add_row(r["stage"], str(r["step"]), r["split"], *map(_fmt, cells))
    console.print(table)


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def _descriptions(path: Path | None) -> dict[str, str]:
    """user_id -> description from an OpinionQA file (profile text) or JSONL rows with
    user_id and description."""
    if path is None:
        return {}
    from personalign.runtime.data.opinionqa import profile_text
    from personalign.runtime.data.validate import read_jsonl

    out = {}
    for line, row in read_jsonl(path):
        if "user_id" not in row:
            raise DataError("missing field", path=str(path), line=line, field="user_id")
        text = row.get("description") or row.get("user_description")
        if not text and isinstance(row.get("profile"), dict):
            text = profile_text({k: str(v) for k, v in row["profile"].items()})
        if text:
            out[row["user_id"]] = text
    return out


def _pair_descriptions(path: Path) -> dict[str, str]:
    """user_id -> user_description of a preference pairs file (rows without one skipped)."""
    from personalign.runtime.data.preferences import load_preferences

    return {p.user_id: p.user_description for p in load_preferences(path)
            if p.user_description}


def _found_descriptions(records: list[dict], episodes: list[Path], loo_pairs: Path | None
                        ) -> dict[str, str]:
    """The users' descriptions where the data carries them: the episodes' own
    ``user_description``, the pairs they were built from (``fspo-data opinionqa`` writes
    pairs.jsonl beside them; ``fspo-data episodes`` names its pairs file in summary.json), or
    the leave-one-out pairs."""
    found = {r["user_id"]: r.get("user_description") or (r.get("meta") or {}).get(
        "user_description") for r in records}
    found = {u: d for u, d in found.items() if d}
    sources = [loo_pairs] if loo_pairs is not None else []
    for folder in dict.fromkeys(p.parent for p in episodes):
        summary = folder / "summary.json"
        named = json.loads(summary.read_text(encoding="utf-8")).get("pairs_file") \
            if summary.is_file() else None
        sources += [folder / "pairs.jsonl"] + ([Path(named)] if named else [])
    users = {r["user_id"] for r in records}
    for path in sources:
        if path.is_file() and len(found) < len(users):
            found = _pair_descriptions(path) | found
    return {u: d for u, d in found.items() if u in users}


def _data_domain(records: list[dict]) -> str | None:
    """The one domain the episodes' pairs name (synthetic data records it), else None."""
    domains = {((r.get("meta") or {}).get("query_meta") or {}).get("domain") for r in records}
    return domains.pop() if len(domains) == 1 and None not in domains else None


def _protocol(records: list[dict]) -> str:
    """Episodes whose pairs name a synthetic domain are fspo-synthetic; others are
    OpinionQA's (its pairs name none)."""
    named = _data_domain(records)
    return SYNTHETIC_PROTOCOL if named and named != "opinionqa" else PREFS_PROTOCOL


def _domain(protocol: str, records: list[dict]) -> str | None:
    """The domain whose guidelines the judge gets: the one the episodes' pairs name, else
    OpinionQA's for its protocol, else none."""
    named = _data_domain(records)
    if named is not None:
        return named
    return "opinionqa" if protocol.startswith("opinionqa") else None


def _episode_models(specs: list[str], run: Path | None):
    from personalign.bench.preferences import EpisodeModel
    from personalign.fspo.data.episodes import PROMPT_MODES
    from personalign.fspo.train.model import model_files

    models = []
    if run is not None:
        if not (run / "final" / "COMPLETE").exists():
            raise ConfigError(f"{run} has no finished training (final/COMPLETE missing)")
        # FSPO's reference is the SFT result: its reference pass is the SFT-only baseline.
        has_sft = (run / "sft" / "COMPLETE").exists()
        models += [EpisodeModel("base-fewshot", "base"),
                   EpisodeModel("fspo", str(run / "final"),
                                reference_name="sft-only" if has_sft else "reference")]
    for spec in specs:
        name, _, rest = spec.partition("=")
        if not rest:
            raise ConfigError(f"--model {spec!r}: expected NAME=TARGET[:MODE]")
        target, _, mode = rest.partition(":")
        mode = mode or "as-is"
        if mode not in PROMPT_MODES:
            raise ConfigError(f"--model {spec!r}: mode must be one of {', '.join(PROMPT_MODES)} "
                              "(a model folder whose path contains ':' is not supported)")
        model_files(target)  # a wrong folder fails before any work
        models.append(EpisodeModel(name, target, mode))
    if not models:
        raise ConfigError("nothing to evaluate: pass --run DIR and/or --model NAME=TARGET")
    if len({m.name for m in models}) != len(models):
        raise ConfigError("two models share a name")
    return models


def _loo_records(pairs_file: Path, users: str | None, shots: int) -> list[dict]:
    from personalign.fspo.data.episodes import leave_one_out_episodes
    from personalign.runtime.data.preferences import load_preferences

    if not users:
        raise ConfigError("--loo-pairs needs --loo-users (ids or a JSON file with test_users)")
    if users.endswith(".json"):
        wanted = set(json.loads(Path(users).read_text(encoding="utf-8"))["test_users"])
    else:
        wanted = {u.strip() for u in users.split(",") if u.strip()}
    pairs = [p for p in load_preferences(pairs_file) if p.user_id in wanted]
    if not pairs:
        raise DataError("no pairs of the requested users", path=str(pairs_file))
    return leave_one_out_episodes(pairs, shots)


def _select(records: list[dict], max_users: int | None, max_per_user: int | None) -> list[dict]:
    by_user: dict[str, list[dict]] = {}
    for r in records:
        by_user.setdefault(r["user_id"], []).append(r)
    users = sorted(by_user)[: max_users or None]
    return [r for u in users for r in by_user[u][: max_per_user or None]]


@app.command("eval")
def eval_cmd(
    episodes: list[Path] | None = typer.Option(None, "--episodes",
                                               help="Held-out users' episodes."),
    loo_pairs: Path | None = typer.Option(None, help="Preference pairs file: build "
                                          "leave-one-out episodes for --loo-users instead."),
    loo_users: str | None = typer.Option(None, help="Comma-separated user ids, or a JSON "
                                         "file with a test_users list."),
    loo_shots: int = typer.Option(4, help="Shots per leave-one-out episode."),
    out: Path = typer.Option(..., "--out", "-o", help="Report folder (a rerun resumes it)."),
    run: Path | None = typer.Option(None, help="A training output folder: evaluates the "
                                       "base model with the same shots, FSPO and SFT only."),
    model: list[str] | None = typer.Option(None, "--model", help="More models: NAME=TARGET"
                                              "[:MODE], TARGET = base | model or run folder, "
                                              "MODE = as-is | zero-shot | oracle | rat "
                                              "(write the user's description, then answer)."),
    descriptions: Path | None = typer.Option(None, help="User descriptions: OpinionQA file "
                                                "(profile text) or JSONL user_id/description "
                                                "(default: those the episodes' pairs carry)."),
    win_rate: bool = typer.Option(False, "--win-rate", help="Win rates against each model's "
                                  "own base, judged by the default judge."),
    judge: str | None = typer.Option(None, help="Judge LLM spec for win rates (implies "
                                        "--win-rate; default: Qwen 1.5B Instruct on llama.cpp; "
                                        "e.g. openai:MODEL@URL)."),
    judge_consistency: str = typer.Option(DEFAULT_CONSISTENCY, help="strict | calibrated "
                                          "(remove the judge's position bias first)."),
    domain: str | None = typer.Option(None, help="Whose guidelines the judge gets: opinionqa "
                                      "| elix | reviews | roleplay (default: from the data)."),
    win_max_items: int | None = typer.Option(None, help="Judge only the first N records "
                                             "(default: every test record)."),
    max_users: int | None = typer.Option(None),
    max_per_user: int | None = typer.Option(None),
    beta: float = typer.Option(0.01),
    threads: int | None = typer.Option(None),
    protocol: str | None = typer.Option(None, help=f"The report's protocol name (default: "
                                        f"{SYNTHETIC_PROTOCOL} for episodes whose pairs name a "
                                        f"synthetic domain, else {PREFS_PROTOCOL})."),
    force: bool = typer.Option(False, help="Recompute results whose inputs changed."),
):
    """Reward, log-prob and choice accuracy (and with --win-rate the win rate against each
    model's own base without shots, over every record, with the judge's order consistency) of
    each model on held-out users' episodes, in the benchmark's report format.

    With --run: the base model with the same shots, FSPO, and the SFT-only model (FSPO's
    reference pass); more models with --model (e.g. pooled=RUN/final:zero-shot,
    oracle=base:oracle, with the descriptions the data carries or --descriptions)."""
    from personalign.bench.preferences import evaluate_episodes
    from personalign.fspo.train.data import load_episodes
    from personalign.runtime.settings import configure_threads

    configure_threads(threads)
    if loo_pairs is not None:
        records = _loo_records(loo_pairs, loo_users, loo_shots)
    elif episodes:
        records = load_episodes(episodes)
    else:
        raise ConfigError("pass --episodes FILE or --loo-pairs FILE --loo-users ...")
    records = _select(records, max_users, max_per_user)
    models = _episode_models(list(model or []), run)
    if judge_consistency not in get_args(Consistency):
        raise ConfigError(f"--judge-consistency must be one of {get_args(Consistency)}")
    protocol = protocol or _protocol(records)
    domain = domain or _domain(protocol, records)
    guidelines = domain_guidelines(domain)
    found = _found_descriptions(records, list(episodes or []), loo_pairs)
    found |= _descriptions(descriptions)  # --descriptions overrides what the data carries
    judge_llm = None
    if win_rate or judge:
        from personalign.runtime.llm.factory import load_llm

        judge_llm = load_llm(judge or DEFAULT_JUDGE)
        missing = len({r["user_id"] for r in records} - set(found))
        if missing:
            console.print(f"[yellow]{missing} user(s) have no description:[/] the judge "
                          "sees none for them (pass --descriptions)")
    source = ", ".join(str(p) for p in episodes or []) or f"{loo_pairs} (leave-one-out)"
    summary = evaluate_episodes(models, records, out, protocol=protocol, beta=beta,
                                descriptions=found, judge=judge_llm,
                                judge_consistency=judge_consistency, guidelines=guidelines,
                                win_max_items=win_max_items, force=force,
                                meta={"data": source, "run": str(run) if run else None,
                                      "judge_domain": domain})
    table = Table("method", "choice acc.", "log-prob acc.", "reward acc.",
                  title=f"{protocol}: {len({r['user_id'] for r in records})} held-out users "
                        "(macro over users)")
    for r in summary["per_method"]:
        table.add_row(r["label"], *(_fmt(r.get(k)) for k in
                                    ("accuracy", "logp_accuracy", "reward_accuracy")))
    console.print(table)
    console.print(f"report: {out}/README.md")


@app.command("judge-check")
def judge_check_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="Report folder (judge_check.md/.json)."),
    data: Path | None = typer.Option(None, "--data", help="OpinionQA file (e.g. dev.jsonl): "
                                     "its users' answers as known pairs."),
    users: int = typer.Option(8, help="OpinionQA users (file order)."),
    per_user: int = typer.Option(5, help="OpinionQA pairs per user."),
    synthetic: bool = typer.Option(True, "--synthetic/--no-synthetic",
                                   help="The packaged synthetic known pairs."),
    synthetic_limit: int | None = typer.Option(None, help="Only the first N synthetic pairs."),
    judge: str | None = typer.Option(None, help="Judge LLM spec (default: the project's "
                                     "judge, Qwen 1.5B Instruct on llama.cpp)."),
    threads: int | None = typer.Option(None),
):
    """The judge's accuracy, order consistency and tie rate on pairs whose answer is known,
    with position calibration off and on: how far its win rates can be trusted."""
    from personalign.bench.preferences import judge_check_markdown
    from personalign.fspo.data.judge_check import (
        check_judge, opinionqa_known_pairs, synthetic_known_pairs,
    )
    from personalign.runtime.llm.factory import load_llm
    from personalign.runtime.settings import configure_threads
    from personalign.runtime.storage import atomic_write_json, atomic_write_text

    configure_threads(threads)
    pairs = opinionqa_known_pairs(data, users, per_user) if data is not None else []
    if synthetic:
        pairs += synthetic_known_pairs(synthetic_limit)
    if not pairs:
        raise ConfigError("nothing to check: pass --data FILE and/or keep --synthetic")
    spec = judge or DEFAULT_JUDGE
    start = time.perf_counter()
    result = check_judge(load_llm(spec), pairs)
    wall = time.perf_counter() - start
    result.update(spec=spec, data=str(data) if data else None, wall_s=round(wall, 1),
                  s_per_pair=round(wall / len(pairs), 2))
    md = judge_check_markdown(result)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "judge_check.json", result, indent=2)
    atomic_write_text(out / "judge_check.md", f"# Judge check: {spec}\n\n{len(pairs)} known "
                      f"pairs, each judged in both orders; {wall:.0f} s "
                      f"({wall / len(pairs):.1f} s a pair).\n\n{md}\n")
    console.print(md)
    console.print(f"report: {out}/judge_check.md ({wall:.0f} s, {wall / len(pairs):.1f} s a "
                  "pair)")
