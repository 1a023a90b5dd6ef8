"""`personalign serve api|openai`: the personalization service and the OpenAI-compatible server."""

from __future__ import annotations

from pathlib import Path

import typer

from personalign.runtime import models

app = typer.Typer(no_args_is_help=True)


@app.command("api")
def api(host: str = typer.Option("127.0.0.1"), port: int = typer.Option(8080),
        task_model: str = typer.Option(models.DEFAULT_SCORER, help="Scores the options."),
        optimizer_model: str = typer.Option(models.DEFAULT_GENERATOR,
                                            help="Writes the prompts."),
        store: Path = typer.Option(None, help="Where user personalizations are kept."),
        openai: bool = typer.Option(True, help="Also serve the models at /openai/v1.")) -> None:
    """Personalization service: fit a user's Fermi prompts, answer as that user."""
    import uvicorn

    from personalign.service.app import ServiceConfig, create_app

    config = ServiceConfig(task_model=task_model, optimizer_model=optimizer_model, store=store,
                           serve_openai=openai)
    typer.echo(f"personalign service on http://{host}:{port} (docs at /docs)")
    uvicorn.run(create_app(config), host=host, port=port, log_level="warning")


@app.command("openai")
def openai(model: list[str] = typer.Option([models.DEFAULT_GENERATOR], "--model", "-m",
                                           help="Model spec to serve (repeatable)."),
           host: str = typer.Option("127.0.0.1"), port: int = typer.Option(8000)) -> None:
    """OpenAI-compatible server (chat/completions with first-token log-probs) for any backend."""
    from personalign.service.openai_server import serve_openai

    typer.echo(f"OpenAI-compatible server on http://{host}:{port}/v1")
    serve_openai(model, host=host, port=port)
