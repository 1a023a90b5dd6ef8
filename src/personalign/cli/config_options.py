"""Command-line options built from a config dataclass's fields, so a command never lists them
again: every scalar field becomes ``--field-name`` (unset: the config file's or the default
value), its help the field's own (``metadata={"help": ...}``) followed by the choices of a
``Literal`` field and the default."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from typing import Any, Callable, Optional, Union

import typer
from rich.markup import escape

from personalign.runtime.config import field_help, literal_choices, public_fields

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


def option_help(config_cls, f: dataclasses.Field, annotation: Any,
                default: str | None = None) -> str:
    """The help of ``f``'s option: its documentation (else ``Class.field``), its choices and
    its default (``default``: the text shown instead of the field's own; a None default is
    not shown)."""
    text = field_help(f) or f"{config_cls.__name__}.{f.name}"
    choices = literal_choices(annotation)
    if choices:
        text += f" One of: {' | '.join(map(str, choices))}."
    if default is None and f.default not in (dataclasses.MISSING, None):
        default = str(f.default)  # None's meaning (unlimited, derived...) is in the help
    if default is not None:
        text += f" [default: {default}]"
    return escape(text)  # typer renders help as rich markup: "[default: x]" would vanish


def config_options(config_cls, *, skip: tuple[str, ...] = (),
                   only: tuple[str, ...] | None = None, prefix: str = "",
                   flags: dict[str, tuple[str, ...]] | None = None,
                   defaults: dict[str, str] | None = None,
                   into: str = "overrides") -> Callable:
    """Add one typer option per scalar field of ``config_cls`` to the decorated command; the
    command receives the ones given on the command line as the dict ``into`` (field name to
    value). ``only``: just these fields, in this order; ``prefix``: put before each field's
    name in its flag (``max_`` makes ``user_calls`` ``--max-user-calls``); ``flags``: a
    field's own declarations (``("--candidates", "-K")``, the first one long); ``defaults``:
    the default a field's help shows instead of its own (``"set by --preset"``). An option
    whose name the command already has is left to the command. Decorators stack, each with
    its own ``into``."""
    hints = typing.get_type_hints(config_cls)
    by_name = {f.name: f for f in public_fields(config_cls)}
    names = only if only is not None else tuple(by_name)
    unknown = [n for n in (*names, *(flags or {}), *(defaults or {})) if n not in by_name]
    if unknown:
        raise ValueError(f"{config_cls.__name__} has no field(s) {', '.join(unknown)}")
    fields = [by_name[n] for n in names
              if n not in skip and _scalar(hints[n]) is not None]

    def wrap(command: Callable) -> Callable:
        signature = inspect.signature(command)
        params = [p for p in signature.parameters.values() if p.name != into]
        taken = {p.name for p in params}
        added, field_of = [], {}
        for f in fields:
            decls = list((flags or {}).get(f.name, ("--" + (prefix + f.name).replace("_", "-"),)))
            param = decls[0][2:].replace("-", "_")
            if param in taken:
                continue
            kind = _scalar(hints[f.name])
            if kind is bool:
                decls[0] = f"{decls[0]}/--no-{decls[0][2:]}"
            added.append(inspect.Parameter(
                param, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[kind],
                default=typer.Option(None, *decls, show_default=False, help=option_help(
                    config_cls, f, hints[f.name], (defaults or {}).get(f.name)))))
            field_of[param] = f.name

        @functools.wraps(command)
        def run(**kwargs):
            given = {field_of[p]: kwargs.pop(p, None) for p in field_of}
            return command(**kwargs, **{into: {n: v for n, v in given.items() if v is not None}})

        run.__signature__ = signature.replace(parameters=params + added)
        return run

    return wrap
