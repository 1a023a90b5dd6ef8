"""`personalign fspo-data`: synthetic preference data, OpinionQA preferences, episodes, cards."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from personalign.fspo.data.judge import DEFAULT_CONSISTENCY, DEFAULT_JUDGE
from personalign.runtime.errors import ConfigError
from personalign.runtime.models import DATA_GENERATOR
from personalign.runtime.storage import atomic_write_json

app = typer.Typer(no_args_is_help=True)
console = Console()


def _token_counter(model: Optional[str]):
    if not model:
        return None
    from personalign.runtime import models

    tokenizer = models.load_tokenizer(models.resolve(model))
    return lambda text: len(tokenizer(text, add_special_tokens=False).input_ids)


def _print_dict(title: str, d: dict) -> None:
    table = Table(title=title)
    table.add_column("key")
    table.add_column("value")
    for k, v in d.items():
        table.add_row(str(k), v if isinstance(v, str) else json.dumps(v))
    console.print(table)


@app.command()
def synth(
    out: Path = typer.Option(..., "--out", help="Output folder (resumable)."),
    domain: str = typer.Option("elix", help="elix | reviews | roleplay"),
    users: int = typer.Option(20, help="Users (ELIX: 5 levels x variants: 5..25)."),
    questions: str = typer.Option("20", help="Number of questions to generate, or a file "
                                  "(one question a line, or JSONL with 'question')."),
    users_file: Optional[Path] = typer.Option(None, help="JSONL users (user_id, description, "
                                              "guidelines, steer) instead of built-ins."),
    pairs_per_question: int = typer.Option(2, help="Pairs judged per user and question."),
    responses_per_question: int = typer.Option(4, help="Steered responses per question "
                                               "(non-ELIX)."),
    views: int = typer.Option(4, help="Views listed per question; each steered response "
                              "also takes one (0: persona steering only)."),
    generator: list[str] = typer.Option([DATA_GENERATOR], help="Generator model "
                                        "spec (repeat for an ensemble)."),
    temperature: list[float] = typer.Option([0.8], help="One, or one per generator."),
    judge: str = typer.Option(DEFAULT_JUDGE, help="Judge model spec (default: Qwen 1.5B "
                              "Instruct on llama.cpp, checked by `fspo judge-check`)."),
    judge_method: str = typer.Option("letter", help="letter (one scored pass per order) | "
                                     "generate (written answer, parsed)."),
    consistency: str = typer.Option(DEFAULT_CONSISTENCY, help="strict | calibrated (remove "
                                    "the judge's position bias before the two-order test)."),
    max_tokens: int = typer.Option(160, help="Max tokens per response."),
    refine_rounds: int = typer.Option(1, help="Persona refinement rounds (0: none)."),
    refine_traits: int = typer.Option(2, help="Traits added per user and round."),
    entropy_threshold: float = typer.Option(0.6, help="Undecided above this entropy (nats)."),
    seed: int = typer.Option(0),
    max_calls: Optional[int] = typer.Option(None, help="Refuse to start above this many "
                                            "planned LLM calls."),
    dry_run: bool = typer.Option(False, help="Print the call budget and stop."),
    force: bool = typer.Option(False, "--force", help="Recompute every stage when --out "
                               "holds a run with other inputs (default: refuse)."),
):
    """Generate a synthetic preference dataset (users, questions, responses, judged pairs)."""
    from personalign.fspo.data.card import write_card
    from personalign.fspo.data.pipeline import SynthConfig, SyntheticPipeline
    from personalign.fspo.data.refine import RefineConfig

    if questions.isdigit():
        n_questions, questions_file = int(questions), None
    else:
        if not Path(questions).exists():
            raise ConfigError(f"--questions: {questions!r} is neither a number nor a file")
        n_questions, questions_file = 0, str(Path(questions).resolve())
    cfg = SynthConfig(domain=domain, users=users, questions=n_questions,
                      questions_file=questions_file,
                      users_file=str(users_file.resolve()) if users_file else None,
                      responses_per_question=responses_per_question, views=views,
                      pairs_per_question=pairs_per_question, generators=list(generator),
                      temperatures=list(temperature), judge_model=judge,
                      judge_method=judge_method, consistency=consistency,
                      max_tokens=max_tokens,
                      refine=RefineConfig(rounds=refine_rounds, max_traits=refine_traits,
                                          entropy_threshold=entropy_threshold, seed=seed),
                      seed=seed)
    pipeline = SyntheticPipeline(cfg)

    def show_budget(b: dict) -> None:
        _print_dict("planned LLM calls (upper bound; cached calls are free)", b)
        if max_calls is not None and b["total"] > max_calls:
            console.print(f"[red]over --max-calls {max_calls}[/]")

    if dry_run:
        show_budget(pipeline.budget())
        return
    start = time.time()
    summary = pipeline.run(out, max_calls=max_calls, on_budget=show_budget, force=force)
    card = write_card(out)
    summary["wall_s_this_run"] = round(time.time() - start, 1)
    summary["llm_usage"] = {k: v.usage.as_dict() for k, v in pipeline.llms.items()}
    _print_dict(f"synthetic data in {out}", summary)
    _print_card(card)


def _print_card(card: dict) -> None:
    keys = ["users", "questions", "responses", "pairs_judged", "pairs_kept", "pairs_per_user",
            "dropped_order_inconsistent", "label_entropy_nats", "refinement", "diversity",
            "elix_level_agreement", "wall_s", "llm_calls_total"]
    _print_dict("data card", {k: card[k] for k in keys if k in card})


@app.command()
def card(folder: Path = typer.Argument(..., help="A synthetic dataset folder.")):
    """Compute (and write card.json / card.md) the data card of a synthetic dataset."""
    from personalign.fspo.data.card import write_card

    _print_card(write_card(folder))
    console.print(f"written {folder / 'card.json'} and {folder / 'card.md'}")


def _write_split(out: Path, train, test, fmt: str) -> list[Path]:
    from personalign.fspo.data.episodes import write_records

    return [write_records(train, out / f"train.{fmt}"), write_records(test, out / f"test.{fmt}")]


def _skip_description_variant(pairs, variant: str) -> bool:
    """The user-description variant trains the rejected side on ANOTHER user's description;
    say so and skip it where the pairs carry none (OpinionQA), rather than show the user's
    own description on both sides."""
    from personalign.fspo.data.episodes import lacking_rejected_description

    lacking = lacking_rejected_description(pairs) if variant == "user-description" else 0
    if lacking:
        console.print(f"[yellow]skipped the user-description variant:[/] {lacking} of "
                      f"{len(pairs)} pairs have no different description on the rejected side "
                      "(OpinionQA has none); nothing written. Use --variant default or oracle.")
    return bool(lacking)


@app.command()
def opinionqa(
    data: Optional[Path] = typer.Option(None, "--data", help="OpinionQA JSONL (e.g. dev.jsonl): "
                                        "users split within the file (--test-fraction)."),
    out: Path = typer.Option(..., "--out"),
    train_data: Optional[Path] = typer.Option(None, "--train-data", help="Or meta-train on "
                                              "every user of this file ..."),
    test_data: Optional[Path] = typer.Option(None, "--test-data", help="... and test on every "
                                             "user of this one (e.g. holdout.jsonl)."),
    shots: int = typer.Option(8, help="N shots per episode."),
    passes: Optional[int] = typer.Option(None, help="Augmentation passes (default 2(N+1))."),
    test_fraction: float = typer.Option(0.2, help="Share of users held out (user-disjoint)."),
    test_users: Optional[int] = typer.Option(None, help="Only the first N test users "
                                             "(file order; a smaller evaluation)."),
    variant: str = typer.Option("default", help="default | preferred-only | user-description "
                                "| oracle"),
    rejected: str = typer.Option("uniform-other", "--rejected", help="Rejected-option rule: "
                                 "uniform-other (one pair, a seeded uniform draw among the "
                                 "other options; the default since issue 28) | every-other "
                                 "(a pair per other option) | ordinal-farthest (the option "
                                 "farthest on the answer scale: the rule before issue 28)."),
    seed: int = typer.Option(0),
    max_prompt_tokens: Optional[int] = typer.Option(None, help="Drop oldest shots above this."),
    token_model: Optional[str] = typer.Option(None, help="Count tokens with this model's "
                                              "tokenizer (default: 4 characters a token)."),
    fmt: str = typer.Option("jsonl", "--format", help="jsonl | parquet"),
):
    """Protocol opinionqa-preferences: pairs, user-disjoint split (within one file, or train
    and test files), train/test episodes."""
    from personalign.fspo.data.episodes import (
        build_episodes, build_eval_episodes, episode_stats, split_users, write_records,
    )
    from personalign.fspo.data.opinionqa_prefs import check_rejected, load_opinionqa_preferences

    check_rejected(rejected)
    if (data is None) == (train_data is None and test_data is None) or \
            (train_data is None) != (test_data is None):
        raise ConfigError("give --data FILE (split within it) or both --train-data FILE and "
                          "--test-data FILE")
    if data is not None:
        res = load_opinionqa_preferences(data, seed=seed, rejected=rejected)
        pairs, skipped_users, skipped_opinions = res.pairs, res.skipped_users, \
            res.skipped_opinions
        train_ids, test_ids = split_users([p.user_id for p in pairs], test_fraction, seed)
        files = {"data": str(data), "split": f"within the file, test fraction {test_fraction}"}
    else:
        train_res = load_opinionqa_preferences(train_data, seed=seed,
                                               rejected=rejected)
        test_res = load_opinionqa_preferences(test_data, seed=seed,
                                              rejected=rejected)
        train_ids = list(dict.fromkeys(p.user_id for p in train_res.pairs))
        test_ids = list(dict.fromkeys(p.user_id for p in test_res.pairs))
        both = set(train_ids) & set(test_ids)
        if both:
            raise ConfigError(f"{len(both)} user(s) are in both files (e.g. "
                              f"{sorted(both)[0]!r}): train and test users must differ")
        pairs = train_res.pairs + test_res.pairs
        skipped_users = train_res.skipped_users + test_res.skipped_users
        skipped_opinions = train_res.skipped_opinions + test_res.skipped_opinions
        files = {"train_data": str(train_data), "test_data": str(test_data),
                 "split": "across files"}
    if test_users is not None:
        test_ids = test_ids[:test_users]
    if _skip_description_variant(pairs, variant):
        return
    out.mkdir(parents=True, exist_ok=True)
    train_set, test_set = set(train_ids), set(test_ids)
    train_pairs = [p for p in pairs if p.user_id in train_set]
    test_pairs = [p for p in pairs if p.user_id in test_set]
    count = _token_counter(token_model)
    train = build_episodes(train_pairs, shots, passes, seed, variant, max_prompt_tokens, count)
    # Test users: N shots from U_opi, scored on their test questions (the protocol).
    test = build_eval_episodes([p for p in test_pairs if p.meta["part"] == "shots"],
                               [p for p in test_pairs if p.meta["part"] == "test"], shots, seed,
                               variant, max_prompt_tokens, count)
    write_records(pairs, out / "pairs.jsonl")
    write_records(train_pairs, out / "pairs_train.jsonl")
    write_records(test_pairs, out / "pairs_test.jsonl")
    paths = _write_split(out, train, test, fmt)
    rules = {}
    for p in pairs:
        rules[p.meta["rule"]] = rules.get(p.meta["rule"], 0) + 1
    summary = {"protocol": "opinionqa-preferences", **files, "seed": seed,
               "shots": shots, "variant": variant, "rejected_rule": rejected,
               "users": len(train_ids) + len(test_ids),
               "skipped_users": skipped_users,
               "skipped_opinions": skipped_opinions, "pairs": len(pairs),
               "rejected_rule_counts": rules, "train_users": train_ids, "test_users": test_ids,
               "train_episodes": episode_stats(train), "test_episodes": episode_stats(test),
               "files": [str(p) for p in paths]}
    atomic_write_json(out / "summary.json", summary)
    _print_dict(f"opinionqa-preferences -> {out}",
                {k: v for k, v in summary.items() if k not in ("train_users", "test_users")})


@app.command()
def episodes(
    pairs: Path = typer.Option(..., "--pairs", help="Preference pairs (JSONL/parquet)."),
    out: Path = typer.Option(..., "--out"),
    shots: int = typer.Option(4, help="N shots per episode."),
    passes: Optional[int] = typer.Option(None, help="Training passes (default 2(N+1))."),
    test_passes: int = typer.Option(1, help="Passes over the test users."),
    test_fraction: float = typer.Option(0.2, help="Share of users held out (user-disjoint)."),
    test_users: Optional[str] = typer.Option(None, help="Comma-separated test user ids "
                                             "(overrides --test-fraction)."),
    held_out_users: bool = typer.Option(False, help="Test users = rows with "
                                        "meta.held_out_user (Reviews combinations)."),
    variant: str = typer.Option("default"),
    seed: int = typer.Option(0),
    max_prompt_tokens: Optional[int] = typer.Option(None),
    token_model: Optional[str] = typer.Option(None),
    fmt: str = typer.Option("jsonl", "--format", help="jsonl | parquet"),
    source: str = typer.Option("pairs", help="pairs (personalign rows) | elix | reviews | "
                               "roleplay (released FSPO schemas)."),
):
    """Few-shot episodes (train/test, user-disjoint) from preference pairs."""
    from personalign.fspo.data.episodes import build_episodes, episode_stats, split_users
    from personalign.fspo.data.released import LOADERS
    from personalign.runtime.data.preferences import load_preferences

    if source == "pairs":
        # The reader `personalign data validate` uses: what it accepts is what runs here.
        rows = load_preferences(pairs)
    elif source in LOADERS:
        rows = LOADERS[source](pairs)
    else:
        raise ConfigError(f"unknown --source {source!r}")
    explicit = [u for u in test_users.split(",") if u] if test_users else None
    if held_out_users:
        explicit = sorted({p.user_id for p in rows if p.meta.get("held_out_user")})
    if _skip_description_variant(rows, variant):
        return
    train_ids, test_ids = split_users([p.user_id for p in rows], test_fraction, seed, explicit)
    train_set = set(train_ids)
    count = _token_counter(token_model)
    train = build_episodes([p for p in rows if p.user_id in train_set], shots, passes, seed,
                           variant, max_prompt_tokens, count)
    test = build_episodes([p for p in rows if p.user_id not in train_set], shots, test_passes,
                          seed + 1, variant, max_prompt_tokens, count)
    out.mkdir(parents=True, exist_ok=True)
    paths = _write_split(out, train, test, fmt)
    summary = {"pairs_file": str(pairs), "shots": shots, "variant": variant, "seed": seed,
               "train_users": train_ids, "test_users": test_ids,
               "train_episodes": episode_stats(train), "test_episodes": episode_stats(test),
               "files": [str(p) for p in paths]}
    atomic_write_json(out / "summary.json", summary)
    _print_dict(f"episodes -> {out}", {k: v for k, v in summary.items()
                                       if k not in ("train_users", "test_users")}
                | {"train_users": len(train_ids), "test_users": len(test_ids)})
