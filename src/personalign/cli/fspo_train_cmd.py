"""`personalign fspo train` and `personalign fspo eval`: FSPO training and evaluation."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from personalign.runtime.errors import ConfigError, DataError

app = typer.Typer(no_args_is_help=True)
console = Console()


@app.command("train")
def train_cmd(
    config: Path | None = typer.Option(None, "--config", "-c",
                                          help="YAML/JSON FSPOTrainConfig; options override it."),
    train: list[Path] | None = typer.Option(None, "--train", help="Training episodes "
                                               "(JSONL/parquet; repeatable)."),
    eval_: list[Path] | None = typer.Option(None, "--eval", help="Held-out users' episodes."),
    output_dir: str | None = typer.Option(None, "--output-dir", "-o"),
    model: str | None = typer.Option(None, help="Embedded model name or HF folder."),
    loss: str | None = typer.Option(None, help="ipo_sum (FSPO) | ipo (TRL, averaged) | dpo"),
    beta: float | None = typer.Option(None),
    steps: int | None = typer.Option(None, help="Preference-stage optimizer steps."),
    sft_steps: int | None = typer.Option(None, help="SFT-stage steps (0 skips SFT)."),
    lr: float | None = typer.Option(None),
    sft_lr: float | None = typer.Option(None),
    warmup_steps: int | None = typer.Option(None),
    grad_accum: int | None = typer.Option(None, help="Episodes per optimizer step."),
    max_minutes: float | None = typer.Option(None, help="Time budget of the preference stage."),
    sft_max_minutes: float | None = typer.Option(None, help="Time budget of the SFT stage."),
    budget_clock: str | None = typer.Option(None, help="wall | cpu: what the budgets count."),
    finetune: str | None = typer.Option(None, help="lora | full"),
    max_prompt_tokens: int | None = typer.Option(None),
    eval_every: int | None = typer.Option(None),
    eval_max_pairs: int | None = typer.Option(None),
    save_every: int | None = typer.Option(None),
    seed: int | None = typer.Option(None),
    threads: int | None = typer.Option(None, help="torch threads (default: torch's)."),
    zero_shot: bool = typer.Option(False, "--zero-shot", help="Pooled baseline: drop the shots "
                                   "from every prompt (train and eval)."),
    no_resume: bool = typer.Option(False, "--no-resume", help="Start over in output-dir."),
):
    """Stage 1 SFT (chosen + rejected, completion-only) then summed-IPO/DPO; resumable."""
    from personalign.fspo.train.config import FSPOTrainConfig
    from personalign.fspo.train.data import load_episodes
    from personalign.fspo.train.evaluate import zero_shot_records
    from personalign.fspo.train.trainer import FSPOTrainer, peak_rss_mb

    cfg = FSPOTrainConfig.from_file(config) if config else FSPOTrainConfig()
    cfg = cfg.updated(
        train_files=[str(p) for p in train] if train else None,
        eval_files=[str(p) for p in eval_] if eval_ else None, output_dir=output_dir,
        model=model, loss=loss, beta=beta, steps=steps, sft_steps=sft_steps, lr=lr,
        sft_lr=sft_lr, warmup_steps=warmup_steps, grad_accum=grad_accum,
        max_minutes=max_minutes, sft_max_minutes=sft_max_minutes, budget_clock=budget_clock,
        finetune=finetune,
        max_prompt_tokens=max_prompt_tokens, eval_every=eval_every,
        eval_max_pairs=eval_max_pairs, save_every=save_every, seed=seed, threads=threads,
        resume=False if no_resume else None)
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


def _model_specs(specs: list[str], run: Path | None, base: str) -> dict[str, tuple]:
    from personalign.fspo.train.evaluate import PROMPT_MODES
    from personalign.fspo.train.model import PersonalizedModel

    def loader(target: str, name: str):
        if target == "base":
            return lambda: PersonalizedModel.base(base, name=name)
        if not Path(target).exists():
            raise ConfigError(f"model folder {target} does not exist")
        return lambda: PersonalizedModel.load(target, name=name)

    models: dict[str, tuple] = {}
    if run is not None:
        models["base-fewshot"] = (loader("base", "base-fewshot"), "as-is")
        if not (run / "final" / "COMPLETE").exists():
            raise ConfigError(f"{run} has no finished training (final/COMPLETE missing)")
        # FSPO's reference is the SFT result: its reference pass is the SFT-only baseline.
        has_sft = (run / "sft" / "COMPLETE").exists()
        models["fspo"] = (loader(str(run / "final"), "fspo"), "as-is",
                          "sft-only" if has_sft else "reference")
    for spec in specs:
        name, _, rest = spec.partition("=")
        if not rest:
            raise ConfigError(f"--model {spec!r}: expected NAME=TARGET[:MODE]")
        target, _, mode = rest.partition(":")
        mode = mode or "as-is"
        if mode not in PROMPT_MODES:
            raise ConfigError(f"--model {spec!r}: mode must be one of {PROMPT_MODES}")
        models[name] = (loader(target, name), mode)
    if not models:
        raise ConfigError("nothing to evaluate: pass --run DIR and/or --model NAME=TARGET")
    return models


def _loo_records(pairs_file: Path, users: str | None, shots: int) -> list[dict]:
    from personalign.fspo.data.episodes import read_pairs
    from personalign.fspo.train.evaluate import leave_one_out_episodes

    if not users:
        raise ConfigError("--loo-pairs needs --loo-users (ids or a JSON file with test_users)")
    if users.endswith(".json"):
        wanted = set(json.loads(Path(users).read_text(encoding="utf-8"))["test_users"])
    else:
        wanted = {u.strip() for u in users.split(",") if u.strip()}
    pairs = [p for p in read_pairs(pairs_file) if p.user_id in wanted]
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
    out: Path = typer.Option(..., "--out", "-o", help="Report folder."),
    run: Path | None = typer.Option(None, help="A training output folder: evaluates the "
                                       "base model with the same shots, FSPO and SFT only."),
    model: list[str] | None = typer.Option(None, "--model", help="More models: NAME=TARGET"
                                              "[:MODE], TARGET = base | model folder, MODE = "
                                              "as-is | zero-shot | oracle."),
    base: str = typer.Option("smollm2-135m-instruct", help="The base model."),
    descriptions: Path | None = typer.Option(None, help="User descriptions: OpinionQA file "
                                                "(profile text) or JSONL user_id/description."),
    judge: str | None = typer.Option(None, help="Judge LLM spec for win rates "
                                        "(e.g. smollm2-135m-instruct, openai:MODEL@URL)."),
    win_max_items: int = typer.Option(20),
    max_users: int | None = typer.Option(None),
    max_per_user: int | None = typer.Option(None),
    beta: float = typer.Option(0.01),
    threads: int | None = typer.Option(None),
    protocol: str = typer.Option("opinionqa-preferences"),
    fresh: bool = typer.Option(False, "--fresh", help="Re-evaluate every model (finished "
                               "models in OUT/parts are reused otherwise)."),
):
    """Reward accuracy, choice accuracy and (with --judge) win rate vs the base model.

    With --run: the base model with the same shots, FSPO, and the SFT-only model (FSPO's
    reference pass); more models with --model (e.g. pooled=RUN/final:zero-shot,
    oracle=base:oracle with --descriptions)."""

    from personalign.fspo.train.data import load_episodes
    from personalign.fspo.train.evaluate import evaluate_models
    from personalign.runtime.settings import configure_threads

    configure_threads(threads)
    if loo_pairs is not None:
        records = _loo_records(loo_pairs, loo_users, loo_shots)
    elif episodes:
        records = load_episodes(episodes)
    else:
        raise ConfigError("pass --episodes FILE or --loo-pairs FILE --loo-users ...")
    records = _select(records, max_users, max_per_user)
    if fresh:
        import shutil

        shutil.rmtree(out / "parts", ignore_errors=True)
    models = _model_specs(list(model or []), run, base)
    judge_llm = None
    if judge:
        from personalign.runtime.llm.factory import load_llm

        judge_llm = load_llm(judge)
    config = {"protocol": protocol, "episodes": [str(p) for p in episodes or []],
              "loo_pairs": str(loo_pairs) if loo_pairs else None, "loo_shots": loo_shots,
              "run": str(run),
              "base": base, "beta": beta, "records": len(records),
              "users": len({r["user_id"] for r in records}), "max_users": max_users,
              "max_per_user": max_per_user, "judge": judge}
    if run is not None and (run / "config.json").exists():
        config["training_config"] = json.loads((run / "config.json").read_text())
    results = evaluate_models(models, records, out, beta=beta, descriptions=_descriptions(
        descriptions), config=config, judge=judge_llm, win_against=next(iter(models)),
        win_max_items=win_max_items)
    table = Table("method", "pairs", "reward acc", "logp acc", "choice acc", "choice acc "
                  "(macro)", title=f"{protocol}: {config['users']} held-out users")
    for res in results:
        cells = [res.summary.get(k) for k in ("reward_accuracy", "logp_accuracy",
                                              "choice_accuracy", "choice_accuracy_macro")]
        table.add_row(res.name, str(res.summary["pairs"]), *map(_fmt, cells))
    console.print(table)
    console.print(f"report: {out}")
