"""`personalign serve [api]`: the personalization service; `serve openai`: bare models."""

from __future__ import annotations

import logging
import os

import typer

from personalign.runtime import models
from personalign.runtime.errors import ConfigError

app = typer.Typer(no_args_is_help=False, invoke_without_command=True)

HOST = typer.Option("127.0.0.1", help="Listen address (loopback by default).")
TASK = typer.Option(models.DEFAULT_TASK, help="Answers (and scores) as the user.")
OPTIMIZER = typer.Option(models.DEFAULT_OPTIMIZER, help="Writes Fermi's prompts.")
DATABASE = typer.Option(None, "--database", help="SQLAlchemy URL (postgresql+psycopg://...); "
                        "default: a SQLite file under $PERSONALIGN_HOME/service.")
ADMIN_ENV = typer.Option("PERSONALIGN_ADMIN_KEY", help="Environment variable holding the admin "
                         "key; unset: one is created on first start and printed once. A changed "
                         "value revokes the old key at start.")
FSPO_MODEL = typer.Option([], "--fspo-model", metavar="NAME=FOLDER",
                          help="An FSPO model fits may name as fspo:NAME (repeatable); requests "
                          "never name folders.")


SERVE_METHOD = typer.Option([], "--method", metavar="NAME",
                            help="A registered method fits may name (repeatable; default: "
                            "fermi and fspo).")


def _fspo_models(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, folder = pair.partition("=")
        if not sep or not name or not folder:
            raise ConfigError(f"--fspo-model {pair!r}: expected NAME=FOLDER")
        out[name] = folder
    return out


def _serve(host: str, port: int, task_model: str, optimizer_model: str,
           database: str | None, admin_key_env: str, fspo_model: list[str],
           method: list[str]) -> None:
    import uvicorn

    from personalign.service.app import ServiceConfig, create_app

    config = ServiceConfig(task_model=task_model, optimizer_model=optimizer_model,
                           database=database, admin_key=os.environ.get(admin_key_env) or None,
                           fspo_models=_fspo_models(fspo_model),
                           **({"methods": tuple(method)} if method else {}))
    application = create_app(config)
    # One line per request from the service itself (request id, route template, status):
    # uvicorn's access log would write each path, user ids included.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    for name in ("personalign.service", "personalign.serving"):  # the domain, the requests
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.INFO)
    typer.echo(f"personalign service on http://{host}:{port} (docs at /docs)")
    uvicorn.run(application, host=host, port=port, log_level="warning", access_log=False)


@app.callback()
def main(ctx: typer.Context, host: str = HOST, port: int = typer.Option(8080),
         task_model: str = TASK, optimizer_model: str = OPTIMIZER, database: str = DATABASE,
         admin_key_env: str = ADMIN_ENV, fspo_model: list[str] = FSPO_MODEL,
         method: list[str] = SERVE_METHOD) -> None:
    """Personalization service (users, API keys, Fermi/FSPO fits, personalized OpenAI chat)."""
    if ctx.invoked_subcommand is None:
        _serve(host, port, task_model, optimizer_model, database, admin_key_env, fspo_model,
               method)


@app.command("api")
def api(host: str = HOST, port: int = typer.Option(8080), task_model: str = TASK,
        optimizer_model: str = OPTIMIZER, database: str = DATABASE,
        admin_key_env: str = ADMIN_ENV, fspo_model: list[str] = FSPO_MODEL,
        method: list[str] = SERVE_METHOD) -> None:
    """The same as `personalign serve`."""
    _serve(host, port, task_model, optimizer_model, database, admin_key_env, fspo_model, method)


@app.command("openai")
def openai(model: list[str] = typer.Option([models.FAST_GENERATOR], "--model", "-m",
                                           help="Model spec to serve (repeatable)."),
           host: str = HOST, port: int = typer.Option(8000)) -> None:
    """OpenAI-compatible server (chat/completions with first-token log-probs) for bare models,
    without users or keys: keep it on loopback."""
    from personalign.serving.openai_server import serve_openai

    typer.echo(f"OpenAI-compatible server on http://{host}:{port}/v1")
    serve_openai(model, host=host, port=port)
