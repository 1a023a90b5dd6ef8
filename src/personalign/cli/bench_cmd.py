"""`personalign bench opinionqa` and `bench globalopinionqa`: every method on the same users
under opinionqa-individual or globalopinionqa-individual (one set of options for both)."""

from __future__ import annotations

import functools
import inspect
import logging
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from personalign.runtime.errors import DataError

app = typer.Typer(no_args_is_help=True)
console = Console()


def print_result(result, title: str) -> None:
    """The per-method table and the paired CIs against vanilla, as rich tables."""
    table = Table(title=title)
    similarity = any("distribution_similarity" in r for r in result.summary["per_method"])
    for col in ("Method", "Accuracy (%)", "95% CI", "Users", "Differs from vanilla") + (
            ("1 - W1/(n-1) (%)",) if similarity else ()):
        table.add_column(col, justify="left" if col == "Method" else "right")
    for r in result.summary["per_method"]:
        differs = r.get("differs_from_vanilla")
        table.add_row(r["label"], f"{100 * r['accuracy']:.1f}",
                      f"[{100 * r['accuracy_ci_low']:.1f}, {100 * r['accuracy_ci_high']:.1f}]",
                      str(r["users"]), "-" if differs is None else f"{100 * differs:.0f}%",
                      *([f"{100 * r['distribution_similarity']:.1f}"] if similarity else []))
    console.print(table)
    labels = {r["method"]: r["label"] for r in result.summary["per_method"]}
    pairs = [p for p in result.summary["paired"] if p["baseline"] in ("vanilla", "fewshot")]
    if pairs:
        t2 = Table(title="Paired differences over users (points, 95% bootstrap CI)")
        for col in ("Method", "minus", "Diff", "95% CI"):
            t2.add_column(col)
        for p in pairs:
            t2.add_row(labels[p["method"]], labels[p["baseline"]], f"{100 * p['diff']:+.1f}",
                       f"[{100 * p['ci_low']:+.1f}, {100 * p['ci_high']:+.1f}]")
        console.print(t2)
    usage = result.summary["usage"]
    calls = ", ".join(f"{k} {v:.0f}" for k, v in usage["calls_per_user"].items())
    console.print(f"LLM calls per user: {calls}; wall per user "
                  f"{usage['wall_s_per_user']['mean']:.0f} s. Report: {result.out}/README.md")


def opinionqa(
    data: Path = typer.Option(..., help="OpinionQA JSONL (../shared/data/opinionqa/dev.jsonl) or, "
                              "for globalopinionqa, its CSV."),
    out: Path = typer.Option(..., help="Report folder (a rerun resumes it)."),
    users: Optional[int] = typer.Option(20, help="First N eligible users in file order."),
    user_ids: Optional[str] = typer.Option(None, help="Comma-separated user ids instead."),
    methods: str = typer.Option("all", help="all, or a comma list of method specs: random, "
                                "vanilla, profile, fewshot[:bm25], opro, fermi_norop, fermi, "
                                "fspo[:RUN|base], pooled:RUN, oracle[:RUN]."),
    preset: str = typer.Option("quick", help="paper (T=10, K=4, L=5), quick (T=2, K=2) or tiny."),
    seed: int = typer.Option(0),
    iterations: Optional[int] = typer.Option(None, "--iterations", "-T", help="Override T."),
    candidates: Optional[int] = typer.Option(None, "--candidates", "-K", help="Override K."),
    memory: Optional[int] = typer.Option(None, "--memory", "-L", help="Override L."),
    final_pool: Optional[str] = typer.Option(None, help="last_k or memory."),
    reference_entry: Optional[str] = typer.Option(None, help="best or worst."),
    scoring: str = typer.Option("letter", help="How choices are read from the task model."),
    fewshot_k: int = typer.Option(3, help="Past opinions in the few-shot baseline."),
    retriever: str = typer.Option("embeddings", help="embeddings or bm25 (few-shot)."),
    fspo_shots: int = typer.Option(8, help="Preference pairs FSPO methods show."),
    task_model: str = typer.Option("gemma3-270m", help="Task model spec (load_llm)."),
    optimizer_model: str = typer.Option("smollm2-135m-instruct", help="Optimizer model spec."),
    force: bool = typer.Option(False, help="Recompute results whose inputs changed."),
    fit_model: Optional[str] = typer.Option(None, help="Cross-LLM transfer: fit Fermi's prompts "
                                            "with this task model and answer with the eval "
                                            "model (adds fermi_transfer:MODEL beside fermi)."),
    eval_model: Optional[str] = typer.Option(None, help="The task model that answers the test "
                                             "questions (overrides --task-model)."),
    transfer_correctness: str = typer.Option("eval", help="RoP correctness of a transferred "
                                             "pool: eval (measured again with the eval model "
                                             "on the user's training opinions) or fit "
                                             "(reused as measured with the fit model)."),
    protocol: str = "opinionqa-individual",
) -> None:
    """Run (or resume) the benchmark and write the report folder."""
    from personalign.bench.runner import BenchConfig, run_benchmark
    from personalign.methods import MethodSettings, parse_specs

    if not data.is_file():
        raise DataError("not a data file", path=str(data))
    overrides = {k: v for k, v in {"iterations": iterations, "num_candidates": candidates,
                                   "memory_size": memory, "final_pool": final_pool,
                                   "reference_entry": reference_entry}.items() if v is not None}
    settings = MethodSettings(seed=seed, preset=preset, fermi=overrides, fewshot_k=fewshot_k,
                              retriever=retriever, fspo_shots=fspo_shots,
                              transfer_correctness=transfer_correctness)
    task_model = eval_model or task_model
    specs = parse_specs(methods)
    if fit_model and fit_model != task_model:  # the gap: transferred minus natively fitted
        specs += [s for s in ("fermi", f"fermi_transfer:{fit_model}") if s not in specs]
    cfg = BenchConfig(data=str(data), out=str(out), protocol=protocol, users=users,
                      user_ids=[u.strip() for u in user_ids.split(",")] if user_ids else None,
                      methods=specs, settings=settings, task_model=task_model,
                      optimizer_model=optimizer_model, scoring=scoring, force=force)
    logging.getLogger("personalign").setLevel(logging.INFO)
    result = run_benchmark(cfg)
    label = "paper" if preset == "paper" and not overrides else f"{preset} (labelled: not paper)"
    print_result(result, f"{protocol}, {len(result.records)} users, preset {label}")


def _for_protocol(command, protocol: str, doc: str):
    """``command`` with its ``protocol`` fixed: the same options under another name."""
    @functools.wraps(command)
    def run(**kwargs):
        return command(**kwargs, protocol=protocol)

    signature = inspect.signature(command)
    run.__signature__ = signature.replace(parameters=[
        p for p in signature.parameters.values() if p.name != "protocol"])
    run.__doc__ = doc
    return run


app.command("opinionqa")(_for_protocol(
    opinionqa, "opinionqa-individual", opinionqa.__doc__))
app.command("globalopinionqa")(_for_protocol(
    opinionqa, "globalopinionqa-individual",
    "Run (or resume) globalopinionqa-individual (countries as users) and write the report "
    "folder; accuracy and 1 - normalized Wasserstein distance."))
