"""`personalign run`: the main job on the embedded default models."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from personalign.bench.runner import DEMO_METHODS

console = Console()


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run(out: Path = typer.Option(Path("runs/demo"), help="Report folder (a rerun resumes)."),
            preset: str = typer.Option("tiny", help="Fermi preset: tiny (T=1, K=1: the demo "
                                       "runs in under 4 minutes), quick or paper."),
            data: Path = typer.Option(None, help="OpinionQA JSONL (default: the sample users)."),
            users: int = typer.Option(None, help="At most this many users."),
            methods: str = typer.Option(",".join(DEMO_METHODS), help="Comma list of method "
                                        "specs (see `bench opinionqa --help`)."),
            workers: int = typer.Option(None, help="Worker processes, one user each at a time "
                                        "(default: 2 on a machine with 2 or more cores).")
            ) -> None:
        """Fermi and its baselines on the sample users with the embedded models; prints the
        table and writes the report folder."""
        from personalign.bench.runner import run_demo
        from personalign.cli.bench_cmd import print_summary
        from personalign.methods import parse_specs
        from personalign.runtime import models
        from personalign.runtime.llm.factory import prepare_llm

        with console.status("preparing the models (once: the GGUF assembled and checked; "
                            "on a CPU with native bfloat16 its weights dequantized for the "
                            "scoring engine) ..."):
            for spec in (models.DEFAULT_TASK, models.DEFAULT_OPTIMIZER,
                         models.DEFAULT_EMBEDDER):
                prepare_llm(spec)
        result = run_demo(path=data, out=out, preset=preset, n_users=users,
                          methods=parse_specs(methods), workers=workers)
        print_summary(result.summary, result.out,
                      f"opinionqa-individual on {data or 'the sample users'} (preset {preset})")
