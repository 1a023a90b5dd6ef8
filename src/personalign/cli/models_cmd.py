"""`personalign models prepare|list`."""

from __future__ import annotations

import time

import typer
from rich.console import Console
from rich.table import Table

from personalign.runtime import models

app = typer.Typer(no_args_is_help=True)
console = Console()


@app.command("prepare")
def prepare(names: list[str] = typer.Argument(None, help="Models (default: all embedded)."),
            force: bool = typer.Option(False, help="Convert again even if prepared.")) -> None:
    """Prepare the embedded models once: GGUFs assembled and checked, converted into cached
    transformers folders where the engine runs them (with no names: every model, and the
    default task model's engine folder)."""
    from personalign.runtime.llm.factory import parse_spec, prepare_llm

    for name in names or list(models.EMBEDDED):
        done = models.is_prepared(name) and not force
        with console.status(f"preparing {name} ..."):
            start = time.time()
            path = models.prepare(name, force=force)
        note = "already prepared" if done else f"prepared in {time.time() - start:.1f}s"
        console.print(f"[green]ok[/] {name}: {path} ({note})")
    if not names:
        for spec in (models.DEFAULT_TASK, models.DEFAULT_OPTIMIZER):
            with console.status(f"preparing {spec} for its backend ..."):
                prepare_llm(spec)
            console.print(f"[green]ok[/] {spec} ({parse_spec(spec)[0]})")


@app.command("list")
def list_models() -> None:
    """Show the embedded models, their roles, whether prepared, and sizes."""
    table = Table("name", "role", "prepared", "size (MB)", "path")
    for row in models.listing():
        table.add_row(row["name"], row["role"], "yes" if row["prepared"] else "no",
                      f"{row['size_mb']:.1f}", row["path"])
    console.print(table)
    console.print(f"home: {models.models_dir().parent}  (set PERSONALIGN_HOME to move it)")


@app.command("smoke")
def smoke(threads: int = typer.Option(0, help="Torch threads (0: default).")) -> None:
    """Score, generate and embed with every embedded model; print load time and speeds."""
    from personalign.runtime.smoke import run_smoke

    with console.status("running the embedded models ..."):
        rows, emb = run_smoke(threads=threads or None)
    table = Table("model", "load (s)", "scoring items/s", "easy-question accuracy",
                  "generation tokens/s", "sample")
    for r in rows:
        table.add_row(r.model, f"{r.load_s:.1f}", f"{r.items_per_s:.1f}", f"{r.accuracy:.2f}",
                      f"{r.tokens_per_s:.1f}", r.sample)
    console.print(table)
    console.print(f"{emb['model']}: load {emb['load_s']:.1f}s, {emb['texts_per_s']:.0f} texts/s, "
                  f"cosine(paraphrase)={emb['paraphrase_sim']:.2f} vs "
                  f"cosine(unrelated)={emb['unrelated_sim']:.2f}")
