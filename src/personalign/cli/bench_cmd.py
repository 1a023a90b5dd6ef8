"""`personalign bench opinionqa` and `bench globalopinionqa`: every method on the same users
under opinionqa-individual or globalopinionqa-individual (one set of options for both)."""

from __future__ import annotations

import functools
import inspect
import json
import logging
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from personalign.cli.config_options import config_options
from personalign.methods import FERMI_PRESETS, FermiConfig, MethodSettings
from personalign.runtime.budget import Limits
from personalign.runtime.errors import ConfigError, DataError
from personalign.runtime.personalizer import SharedModels

app = typer.Typer(no_args_is_help=True)
console = Console()

#: the FermiConfig fields with their own options (T, K, L and the open [?] choices)
FERMI_FLAGS = {"iterations": ("--iterations", "-T"), "num_candidates": ("--candidates", "-K"),
               "memory_size": ("--memory", "-L"), "final_pool": ("--final-pool",),
               "reference_entry": ("--reference-entry",)}


def parse_assignments(pairs: list[str], option: str) -> dict:
    """``FIELD=VALUE`` strings to a dict; a value is JSON (8, 0.7, true, null) or else text."""
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"{option} {pair!r}: expected FIELD=VALUE")
        try:
            out[name.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[name.strip()] = value
    return out


def print_projection(projection: dict, n_users: int) -> None:
    """Projected LLM calls and tokens per (method, phase): per user and for the run."""
    table = Table(title=f"Projected LLM use ({n_users} users; no retries, no cache hits)")
    for col in ("Method", "Phase", "Calls / user", "Tokens / user", "Calls", "Tokens"):
        table.add_column(col, justify="left" if col in ("Method", "Phase") else "right")
    calls = tokens = 0
    for spec, phases in projection.items():
        for phase, c in phases.items():
            table.add_row(spec, phase, f"{c['calls_per_user']:,.0f}",
                          f"{c['tokens_per_user']:,.0f}", f"{c['calls']:,.0f}",
                          f"{c['tokens']:,.0f}")
            calls, tokens = calls + c["calls"], tokens + c["tokens"]
    table.add_row("all", "", f"{calls / max(1, n_users):,.0f}",
                  f"{tokens / max(1, n_users):,.0f}", f"{calls:,.0f}", f"{tokens:,.0f}")
    console.print(table)


def print_summary(summary: dict, out: Path, title: str) -> None:
    """The per-method table and the paired CIs against vanilla of a report's summary tables
    (what ``write_report`` and ``render`` return), as rich tables."""
    table = Table(title=title)
    similarity = any("distribution_similarity" in r for r in summary["per_method"])
    for col in ("Method", "Accuracy (%)", "95% CI", "Users", "Differs from vanilla") + (
            ("1 - W1/(n-1) (%)",) if similarity else ()):
        table.add_column(col, justify="left" if col == "Method" else "right")
    for r in summary["per_method"]:
        differs = r.get("differs_from_vanilla")
        table.add_row(r["label"], f"{100 * r['accuracy']:.1f}",
                      f"[{100 * r['accuracy_ci_low']:.1f}, {100 * r['accuracy_ci_high']:.1f}]",
                      str(r["users"]),
                      "-" if differs is None or differs != differs else f"{100 * differs:.0f}%",
                      *([f"{100 * r['distribution_similarity']:.1f}"] if similarity else []))
    console.print(table)
    labels = {r["method"]: r["label"] for r in summary["per_method"]}
    pairs = [p for p in summary["paired"] if p["baseline"] in ("vanilla", "fewshot")]
    if pairs:
        t2 = Table(title="Paired differences over users (points, 95% bootstrap CI)")
        for col in ("Method", "minus", "Diff", "95% CI"):
            t2.add_column(col)
        for p in pairs:
            t2.add_row(labels[p["method"]], labels[p["baseline"]], f"{100 * p['diff']:+.1f}",
                       f"[{100 * p['ci_low']:+.1f}, {100 * p['ci_high']:+.1f}]")
        console.print(t2)
    usage = summary["usage"]
    calls = ", ".join(f"{k} {v:.0f}" for k, v in usage["calls_per_user"].items())
    console.print(f"LLM calls per user: {calls}; wall per user "
                  f"{usage['wall_s_per_user']['mean']:.0f} s. Report: {out}/README.md")


# The options that are config fields come from the configs, help and default included: the
# methods' settings, the Fermi fields a preset sets (and the two open [?] choices), the models
# and the limits. The rest are the benchmark's own.
@config_options(Limits, prefix="max_", into="limit_settings")
@config_options(SharedModels, only=("task", "optimizer", "scoring"),
                flags={"task": ("--task-model",), "optimizer": ("--optimizer-model",)},
                into="model_settings")
@config_options(FermiConfig, only=tuple(FERMI_FLAGS), flags=FERMI_FLAGS,
                defaults={name: "set by --preset" for name in FERMI_PRESETS["paper"]},
                into="fermi_settings")
@config_options(MethodSettings, into="method_settings")
def opinionqa(
    data: Path = typer.Option(..., help="OpinionQA JSONL (../shared/data/opinionqa/dev.jsonl) or, "
                              "for globalopinionqa, its CSV."),
    out: Path = typer.Option(..., help="Report folder (a rerun resumes it)."),
    users: Optional[int] = typer.Option(20, help="First N eligible users in file order."),
    user_ids: Optional[str] = typer.Option(None, help="Comma-separated user ids instead."),
    methods: str = typer.Option("all", help=escape(
        "all, or a comma list of method specs: random, vanilla, profile, fewshot[:bm25], opro, "
        "fermi_norop, fermi, fermi+fewshot, fspo[:RUN|base][:rat], pooled:RUN, oracle[:RUN]; "
        "the DSPy peers dspy-gepa, dspy-miprov2, dspy-bootstrap (extra personalign[peers]; budget: "
        "Fermi's calls at --preset).")),
    fermi: list[str] = typer.Option([], "--fermi", help="FIELD=VALUE: any FermiConfig field "
                                    "(repeatable), e.g. optimizer_strategy=continuation, "
                                    "samples_per_iteration=8, include_best=true."),
    force: bool = typer.Option(False, help="Recompute results whose inputs changed."),
    executor: str = typer.Option("local", help="local (this machine) or ray."),
    workers: int = typer.Option(1, help="Worker processes (local) or actors (ray); each "
                                "loads the models once."),
    threads: Optional[int] = typer.Option(None, help="Torch threads for the whole run, shared "
                                          "out among the workers (default: "
                                          "$PERSONALIGN_THREADS, else the CPU count)."),
    address: Optional[str] = typer.Option(None, help="Ray cluster to join (auto, "
                                          "ray://host:10001); default: a local Ray."),
    fit_model: Optional[str] = typer.Option(None, help="Cross-LLM transfer: fit Fermi's prompts "
                                            "with this task model and answer with the eval "
                                            "model (adds fermi_transfer:MODEL beside fermi)."),
    eval_model: Optional[str] = typer.Option(None, help="The task model that answers the test "
                                             "questions (overrides --task-model)."),
    protocol: str = "opinionqa-individual",
    method_settings: dict | None = None,
    fermi_settings: dict | None = None,
    model_settings: dict | None = None,
    limit_settings: dict | None = None,
) -> None:
    """Run (or resume) the benchmark and write the report folder."""
    from personalign.bench.projection import project_run
    from personalign.bench.protocols import load_users
    from personalign.bench.runner import BenchConfig, run_benchmark, select_users
    from personalign.methods import parse_specs
    from personalign.runtime.executor import ExecutorConfig

    if not data.is_file():
        raise DataError("not a data file", path=str(data))
    overrides = dict(fermi_settings or {})
    overrides.update(parse_assignments(fermi, "--fermi"))
    settings = MethodSettings(**(method_settings or {}), fermi=overrides)
    models = SharedModels(**{**(model_settings or {}),
                             **({"task": eval_model} if eval_model else {})})
    specs = parse_specs(methods)
    if fit_model and fit_model != models.task:  # the gap: transferred minus natively fitted
        specs += [s for s in ("fermi", f"fermi_transfer:{fit_model}") if s not in specs]
    cfg = BenchConfig(data=str(data), out=str(out), protocol=protocol, users=users,
                      user_ids=[u.strip() for u in user_ids.split(",")] if user_ids else None,
                      methods=specs, settings=settings, task_model=models.task,
                      optimizer_model=models.optimizer, scoring=models.scoring, force=force,
                      execution=ExecutorConfig(kind=executor, workers=workers, threads=threads,
                                               address=address),
                      limits=Limits(**(limit_settings or {})))
    logging.getLogger("personalign").setLevel(logging.INFO)
    loaded = load_users(cfg.protocol, cfg.data)
    splits, _ = select_users(loaded, cfg)
    print_projection(project_run(cfg.methods, splits, cfg.settings), len(splits))
    console.print(f"Executor: {cfg.execution.describe()}")
    result = run_benchmark(cfg, loaded)
    for user, reason in result.stopped.items():
        console.print(f"[yellow]stopped[/] {user}: {reason} (raise the limit and rerun to "
                      "continue)", soft_wrap=True)
    preset = settings.preset
    label = "paper" if preset == "paper" and not overrides else f"{preset} (labelled: not paper)"
    print_summary(result.summary, result.out,
                  f"{protocol}, {len(result.records)} users, preset {label}")


@app.command("pool")
def pool(
    summaries: list[Path] = typer.Argument(..., help="The summary.json of each run folder."),
    out: Path = typer.Option(..., help="Report folder for the pooled users."),
) -> None:
    """One report from the parts of one benchmark (the same protocol, data, models, settings
    and split), joined unit by unit: a run split over sessions or machines by --user-ids or
    --methods. Reads only each part's summary.json (numbers: no question, answer or
    prompt); names the users not yet complete and the methods they miss."""
    from personalign.bench.report import pool as pool_summaries
    from personalign.bench.report import render

    users, meta = pool_summaries(summaries)
    summary = render(out, users, meta)
    done = sum(not u.get("incomplete") for u in users)
    print_summary(summary, out, f"{meta['protocol']}, {done} users pooled from "
                  f"{len(summaries)} runs" + (f" ({len(users) - done} not yet complete)"
                                              if done < len(users) else ""))
    specs = [m["spec"] for m in meta["methods"]]
    for user in users:
        if user.get("incomplete"):  # what a next part runs for them
            missing = ",".join(s for s in specs if s not in user["seconds"])
            console.print(f"not yet complete: {user['user_id']} (--methods {missing})",
                          soft_wrap=True)


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
