"""`personalign fit` and `personalign predict`: any method for one user of an OpinionQA file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from personalign.runtime.errors import ConfigError, DataError
from personalign.runtime.personalizer import SharedModels

console = Console()


def _user_split(data: Path, user_id: str, seed: int):
    """The protocol split of one user; the whole file is validated, not only that user."""
    from personalign.bench.runner import split_user
    from personalign.runtime.data.opinionqa import load_opinionqa

    users = [u for u in load_opinionqa(data) if u.user_id == user_id]
    if not users:
        raise DataError(f"user {user_id!r} not found", path=str(data), field="user_id")
    split = split_user(users[0], seed=seed)
    if split is None:
        raise DataError(f"user {user_id!r} has fewer than 25 opinions", path=str(data))
    return split


def register(app: typer.Typer) -> None:
    @app.command("fit")
    def fit(data: Path = typer.Option(..., help="OpinionQA-schema JSONL."),
            user: str = typer.Option(..., help="user_id to personalize for."),
            out: Path = typer.Option(..., help="Where to save the fitted method (JSON)."),
            method: str = typer.Option("fermi", help="A method spec: fermi, opro, fewshot, "
                                       "profile, fspo:RUN, ..."),
            preset: str = typer.Option("quick", help="Fermi/OPRO preset: paper, quick, tiny."),
            seed: int = typer.Option(0),
            task_model: str = typer.Option(SharedModels.task),
            optimizer_model: str = typer.Option(SharedModels.optimizer),
            scoring: str = typer.Option(SharedModels.scoring, help="How choices are read.")
            ) -> None:
        """Fit a method on the user's 20 past opinions (the protocol split) and save it."""
        from personalign.methods import MethodSettings, build

        split = _user_split(data, user, seed)
        models = SharedModels(task_model, optimizer_model, scoring=scoring)
        method = build(method, models, MethodSettings(seed=seed, preset=preset))
        method.fit(split.train)
        method.save(out)
        report = method.fit_report()
        console.print(f"saved {method.label} for {user} to {out}")
        if report.get("pool"):
            best = max(report["pool"], key=lambda p: p["train_score"])
            console.print(f"{len(report['pool'])} prompts; best training score "
                          f"{100 * best['train_score']:.1f}: {best['prompt']!r}")
            console.print(f"optimizer failures: {report.get('failures')}"
                          + (" [yellow](pool collapsed to the initial prompt)[/]"
                             if report.get("collapsed") else ""))

    @app.command("predict")
    def predict(model: Path = typer.Option(..., help="JSON written by `personalign fit`."),
                data: Path = typer.Option(..., help="OpinionQA-schema JSONL with the user."),
                out: Optional[Path] = typer.Option(None, help="Predictions JSONL."),
                seed: int = typer.Option(0),
                task_model: str = typer.Option(SharedModels.task,
                                               help="The task model the method was fit with."),
                optimizer_model: str = typer.Option(SharedModels.optimizer),
                scoring: str = typer.Option(SharedModels.scoring),
                eval_model: Optional[str] = typer.Option(None, help="Answer with this task "
                                                         "model instead (a Fermi pool "
                                                         "transfers)."),
                transfer_correctness: str = typer.Option("eval", help="eval: RoP correctness "
                                                         "measured again with the eval model on "
                                                         "the user's training opinions; fit: "
                                                         "reused as measured at fit time.")
                ) -> None:
        """Answer the user's test questions (the protocol split) and print the accuracy."""
        from personalign.methods import load
        from personalign.runtime.storage import atomic_write_text

        from dataclasses import replace

        models = SharedModels(task_model, optimizer_model, scoring=scoring)
        method = load(model, models)
        if not method.user_id:
            raise ConfigError(f"{model} names no user")
        split = _user_split(data, method.user_id, seed)
        if eval_model and eval_model != task_model:
            from personalign.methods import method_class

            method = method_class("fermi_transfer").from_fitted(
                method, replace(models, task=eval_model), split.train, transfer_correctness)
        answers = method.predict(list(split.test))
        correct = [a.correctness(q.answer) for a, q in zip(answers, split.test)]
        if out:
            atomic_write_text(out, "".join(json.dumps(
                {"qid": q.qid, "choice": a.choice, "answer": q.answer, "correct": c,
                 "prompt_index": a.prompt_index}) + "\n"
                for q, a, c in zip(split.test, answers, correct)))
        console.print(f"{method.user_id}: {method.label} accuracy "
                      f"{100 * sum(correct) / len(correct):.1f}% on {len(correct)} test questions")
