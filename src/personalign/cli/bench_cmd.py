"""`personalign bench opinionqa`: Fermi and its baselines under protocol opinionqa-individual."""

from __future__ import annotations

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
    """The per-method table and the paired CIs of Fermi, as rich tables."""
    table = Table(title=title)
    for col in ("Method", "Accuracy (%)", "95% CI", "Users"):
        table.add_column(col, justify="left" if col == "Method" else "right")
    for r in result.summary["per_method"]:
        table.add_row(r["label"], f"{100 * r['accuracy']:.1f}",
                      f"[{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}]", str(r["users"]))
    console.print(table)
    pairs = [p for p in result.summary["paired"] if p["method"] in ("fermi", "fermi_norop")]
    if pairs:
        from personalign.bench.report import LABELS

        t2 = Table(title="Paired differences over users (points, 95% bootstrap CI)")
        for col in ("Method", "minus", "Diff", "95% CI"):
            t2.add_column(col)
        for p in pairs:
            t2.add_row(LABELS[p["method"]], LABELS[p["baseline"]], f"{100 * p['diff']:+.1f}",
                       f"[{100 * p['ci_low']:+.1f}, {100 * p['ci_high']:+.1f}]")
        console.print(t2)
    usage = result.summary["usage"]
    calls = ", ".join(f"{k} {v:.0f}" for k, v in usage["calls_per_user"].items())
    console.print(f"LLM calls per user: {calls}; wall per user "
                  f"{usage['wall_s_per_user']['mean']:.0f} s. Report: {result.out}/README.md")


@app.command("opinionqa")
def opinionqa(
    data: Path = typer.Option(..., help="OpinionQA JSONL (e.g. ../shared/data/opinionqa/dev.jsonl)."),
    out: Path = typer.Option(..., help="Report folder (a rerun resumes it)."),
    users: Optional[int] = typer.Option(20, help="First N eligible users in file order."),
    user_ids: Optional[str] = typer.Option(None, help="Comma-separated user ids instead."),
    methods: str = typer.Option("all", help="all or a comma list of random, vanilla, profile, "
                                            "fewshot, opro, fermi_norop, fermi."),
    preset: str = typer.Option("quick", help="paper (T=10, K=4, L=5), quick (T=2, K=2) or tiny."),
    seed: int = typer.Option(0),
    iterations: Optional[int] = typer.Option(None, "--iterations", "-T", help="Override T."),
    candidates: Optional[int] = typer.Option(None, "--candidates", "-K", help="Override K."),
    memory: Optional[int] = typer.Option(None, "--memory", "-L", help="Override L."),
    final_pool: Optional[str] = typer.Option(None, help="last_k or memory."),
    reference_entry: Optional[str] = typer.Option(None, help="best or worst."),
    scoring: Optional[str] = typer.Option(None, help="letter, text or generate."),
    fewshot_k: int = typer.Option(3, help="Past opinions in the few-shot baseline."),
    retriever: str = typer.Option("embeddings", help="embeddings or bm25 (few-shot)."),
    task_model: str = typer.Option("gemma3-270m", help="Task model spec (load_llm)."),
    optimizer_model: str = typer.Option("smollm2-135m-instruct", help="Optimizer model spec."),
) -> None:
    """Run (or resume) the benchmark and write the report folder."""
    from personalign.bench.opinionqa import BenchConfig, parse_methods, run_benchmark

    if not data.exists():
        raise DataError("data file not found", path=str(data))
    overrides = {k: v for k, v in {"iterations": iterations, "num_candidates": candidates,
                                   "memory_size": memory, "final_pool": final_pool,
                                   "reference_entry": reference_entry,
                                   "scoring_method": scoring}.items() if v is not None}
    cfg = BenchConfig(data=str(data), out=str(out), users=users,
                      user_ids=[u.strip() for u in user_ids.split(",")] if user_ids else None,
                      methods=parse_methods(methods), preset=preset, seed=seed,
                      fewshot_k=fewshot_k, fewshot_retriever=retriever, task_model=task_model,
                      optimizer_model=optimizer_model, fermi_overrides=overrides)
    cfg.fermi_config()  # validate before loading models
    logging.getLogger("personalign").setLevel(logging.INFO)
    result = run_benchmark(cfg)
    label = "paper" if preset == "paper" and not overrides else f"{preset} (labelled: not paper)"
    print_result(result, f"opinionqa-individual, {len(result.records)} users, preset {label}")


@app.command("compare")
def compare_cmd(
    fermi: Path = typer.Option(..., help="A `bench opinionqa` report folder."),
    fspo: Path = typer.Option(..., help="A `fspo eval` report folder (same data and seed)."),
    out: Path = typer.Option(..., help="Folder for the side-by-side report."),
    baseline: str = typer.Option("Fermi", help="Method the paired differences subtract."),
) -> None:
    """Fermi and FSPO accuracy on the (user, question) pairs both reports answered."""
    from personalign.bench.compare import compare

    result = compare(fermi, fspo, out, baseline)
    table = Table(title=f"Same {result['users']} users, {result['questions']} questions")
    for col in ("Method", "Accuracy (%)", "95% CI"):
        table.add_column(col, justify="left" if col == "Method" else "right")
    for r in result["per_method"]:
        table.add_row(r["method"], f"{r['accuracy']:.1f}", f"[{r['ci_low']:.1f}, {r['ci_high']:.1f}]")
    console.print(table)
    for p in result["paired"]:
        console.print(f"{p['method']} minus {p['minus']}: {p['diff']:+.1f} "
                      f"[{p['ci_low']:+.1f}, {p['ci_high']:+.1f}]")
    console.print(f"Report: {out}/README.md")
