"""`personalign` command: sub-commands live in small modules, one per area."""

from __future__ import annotations

import logging
import sys

import typer
from rich.console import Console
from rich.markup import escape

from personalign.runtime.errors import PersonalignError

app = typer.Typer(help="Few-shot personalization of LLMs: Fermi and FSPO.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
err = Console(stderr=True)


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")):
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


def _register() -> None:
    from personalign.cli import (bench_cmd, data_cmd, fit_cmd, fspo_data_cmd, fspo_train_cmd,
                                 models_cmd, run_cmd, serve_cmd)

    app.add_typer(models_cmd.app, name="models", help="Prepare and list the embedded models.")
    app.add_typer(data_cmd.app, name="data", help="Validate and inspect datasets.")
    app.add_typer(bench_cmd.app, name="bench", help="Benchmarks (opinionqa-individual, ...).")
    app.add_typer(fspo_data_cmd.app, name="fspo-data", help="FSPO data: synthetic, episodes.")
    app.add_typer(fspo_train_cmd.app, name="fspo", help="FSPO training and evaluation.")
    app.add_typer(serve_cmd.app, name="serve", help="HTTP service and OpenAI-compatible server.")
    run_cmd.register(app)
    fit_cmd.register(app)


_register()


def main(args: list[str] | None = None) -> None:
    """The ``personalign`` entry point (``args`` default to the command line)."""
    try:
        app(args=args, standalone_mode=False)
    except PersonalignError as e:
        # One line however long the path (soft_wrap), and data text is never rich markup.
        err.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]: finished work is saved; run again to resume")
        sys.exit(130)
    except Exception as e:  # click's own usage errors
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Exit):
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
