"""(filled in by its area's work)"""

import typer

app = typer.Typer(no_args_is_help=True)
