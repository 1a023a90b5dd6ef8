"""`personalign run`: the main job on the embedded default models."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run() -> None:
        """Smoke run of the runtime on the embedded models (replaced by the Fermi demo)."""
        raise typer.Exit(0)
