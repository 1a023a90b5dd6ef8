"""Command-line options built from a config dataclass's fields, so a command never lists them
again: every scalar field becomes ``--field-name`` (unset: the config file's or the default
value), its help naming the default and, for ``Literal`` fields, the choices."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from typing import Any, Callable, Optional, Union

import typer

from personalign.runtime.config import literal_choices

SCALARS = (bool, int, float, str)


def _scalar(annotation: Any) -> type | None:
    """The option type of a field: bool/int/float/str (a Literal is a str), else None."""
    if literal_choices(annotation):
        return str
    if annotation in SCALARS:
        return annotation
    if typing.get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _scalar(args[0])
    return None


def config_options(config_cls, *, skip: tuple[str, ...] = ()) -> Callable:
    """Add one typer option per scalar field of ``config_cls`` to the decorated command; the
    command receives the ones given on the command line as ``overrides`` (a dict)."""
    hints = typing.get_type_hints(config_cls)
    fields = [f for f in dataclasses.fields(config_cls)
              if f.name not in skip and _scalar(hints[f.name]) is not None]

    def wrap(command: Callable) -> Callable:
        signature = inspect.signature(command)
        params = [p for p in signature.parameters.values() if p.name != "overrides"]
        taken = {p.name for p in params}
        added = []
        for f in fields:
            if f.name in taken:
                continue
            kind = _scalar(hints[f.name])
            default = f.default if f.default is not dataclasses.MISSING else None
            choices = literal_choices(hints[f.name])
            help_text = (f"{config_cls.__name__}.{f.name}" + (f": {' | '.join(choices)}"
                                                              if choices else "")
                         + f" [config default: {default}]")
            flag = "--" + f.name.replace("_", "-")
            decls = [f"{flag}/--no-{flag[2:]}"] if kind is bool else [flag]
            added.append(inspect.Parameter(
                f.name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[kind],
                default=typer.Option(None, *decls, help=help_text, show_default=False)))
        names = [p.name for p in added]

        @functools.wraps(command)
        def run(**kwargs):
            given = {n: kwargs.pop(n, None) for n in names}
            return command(**kwargs, overrides={n: v for n, v in given.items() if v is not None})

        run.__signature__ = signature.replace(parameters=params + added)
        return run

    return wrap
