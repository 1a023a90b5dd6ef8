"""`personalign fermi fit|predict`: Fermi for one user of an OpinionQA-schema file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from personalign.runtime.errors import ConfigError, DataError

app = typer.Typer(no_args_is_help=True)
console = Console()


def _user_split(data: Path, user_id: str, seed: int):
    from personalign.bench.opinionqa import split_user
    from personalign.runtime.data.opinionqa import load_opinionqa

    if not data.exists():
        raise DataError("data file not found", path=str(data))
    users = load_opinionqa(data, user_ids=[user_id])
    if not users:
        raise DataError(f"user {user_id!r} not found", path=str(data), field="user_id")
    split = split_user(users[0], seed=seed)
    if split is None:
        raise DataError(f"user {user_id!r} has fewer than 25 opinions", path=str(data))
    return split


@app.command("fit")
def fit(data: Path = typer.Option(..., help="OpinionQA-schema JSONL."),
        user: str = typer.Option(..., help="user_id to personalize for."),
        out: Path = typer.Option(..., help="Where to write the learned prompt pool (JSON)."),
        preset: str = typer.Option("quick", help="paper, quick or tiny."),
        mode: str = typer.Option("fermi", help="fermi or opro."),
        seed: int = typer.Option(0),
        task_model: str = typer.Option("gemma3-270m"),
        optimizer_model: str = typer.Option("smollm2-135m-instruct")) -> None:
    """Optimize prompts on the user's 20 few-shot opinions (protocol split) and save them."""
    from personalign.fermi.config import preset as make_preset
    from personalign.fermi.optimizer import Fermi
    from personalign.runtime.embeddings import Embedder
    from personalign.runtime.llm.factory import load_llm

    split = _user_split(data, user, seed)
    cfg = make_preset(preset, seed=seed, mode=mode)
    est = Fermi(cfg, load_llm(task_model), load_llm(optimizer_model), Embedder(cfg.embedder))
    est.fit(list(split.shots), split.user.profile, user_id=user, progress=True)
    est.save(out)
    best = max(est.pool, key=lambda p: p.train_score)
    console.print(f"saved {len(est.pool)} prompts to {out}; best training score "
                  f"{100 * best.train_score:.1f}: {best.prompt!r}")
    console.print(f"optimizer failures: {est.result.failures}")


@app.command("predict")
def predict(model: Path = typer.Option(..., help="JSON written by `fermi fit`."),
            data: Path = typer.Option(..., help="OpinionQA-schema JSONL with the same user."),
            user: Optional[str] = typer.Option(None, help="user_id (default: the model's)."),
            out: Optional[Path] = typer.Option(None, help="Predictions JSONL."),
            rop: bool = typer.Option(True, help="Retrieval-of-Prompt (else best prompt)."),
            seed: int = typer.Option(0),
            task_model: str = typer.Option("gemma3-270m")) -> None:
    """Answer the user's test questions (protocol split) and print the accuracy."""
    from personalign.fermi.optimizer import Fermi
    from personalign.runtime.embeddings import Embedder
    from personalign.runtime.llm.factory import load_llm

    if not model.exists():
        raise DataError("model file not found", path=str(model))
    est = Fermi.load(model)
    user = user or est.user_id
    if not user:
        raise ConfigError("pass --user")
    split = _user_split(data, user, seed)
    est.task_llm, est.embedder = load_llm(task_model), Embedder(est.config.embedder)
    details = est.predict_details(list(split.test), use_rop=rop)
    correct = [d["choice"] == q.answer for d, q in zip(details, split.test)]
    if out:
        with open(out, "w", encoding="utf-8") as f:
            for q, d, c in zip(split.test, details, correct):
                f.write(json.dumps({"qid": q.qid, "pred": d["choice"], "gold": q.answer,
                                    "correct": c, "prompt_index": d["prompt_index"]}) + "\n")
    console.print(f"{user}: accuracy {100 * sum(correct) / len(correct):.1f}% on "
                  f"{len(correct)} test questions ({'RoP' if rop else 'best prompt'})")
