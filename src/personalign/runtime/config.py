"""One config convention for every method and run: dataclasses checked on construction.

A config is a dataclass that inherits :class:`Config`. Construction checks every ``Literal``
field against its choices and turns nested dicts into their dataclasses; a class adds its own
rules in ``validate``. ``from_dict`` and ``from_file`` (YAML or JSON) refuse unknown keys, and
every problem is a :class:`ConfigError` naming the source and the field. A field documents
itself in ``metadata={"help": ...}`` (as TRL's configs do), and the CLI builds its options, help
included, from the same fields (``personalign.cli.config_options``) instead of listing them
again. A field whose name starts with ``_`` is private: runtime state, not configuration, so
``from_dict`` refuses it and ``to_dict`` leaves it out.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

from personalign.runtime.errors import ConfigError

C = TypeVar("C", bound="Config")


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def literal_choices(annotation: Any) -> tuple | None:
    """The choices of a ``Literal[...]`` annotation (also inside ``X | None``), else None."""
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    if typing.get_origin(annotation) in (Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if typing.get_origin(arg) is Literal:
                return typing.get_args(arg)
    return None


def public_fields(cls_or_config) -> list[dataclasses.Field]:
    """The configuration fields of a config: all but the private ones (``_name``)."""
    return [f for f in dataclasses.fields(cls_or_config) if not f.name.startswith("_")]


def field_help(f: dataclasses.Field) -> str | None:
    """A field's documentation (``metadata={"help": ...}``), or None."""
    return f.metadata.get("help")


def _plain(value: Any) -> Any:
    """``dataclasses.asdict``'s conversion of one value (a nested config: its ``to_dict``)."""
    if isinstance(value, Config):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*[_plain(v) for v in value])
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, dict):
        return type(value)((_plain(k), _plain(v)) for k, v in value.items())
    return copy.deepcopy(value)


class Config:
    """Mixin for config dataclasses: checks, dict and file round trips, overrides."""

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            value, annotation = getattr(self, f.name), hints[f.name]
            nested = annotation if dataclasses.is_dataclass(annotation) else None
            if nested and isinstance(value, dict):
                setattr(self, f.name, nested.from_dict(value, source=f.name)
                        if issubclass(nested, Config) else nested(**value))
            choices = literal_choices(annotation)
            if choices and value is not None and value not in choices:
                raise ConfigError(f"{type(self).__name__}.{f.name} must be one of "
                                  f"{', '.join(map(str, choices))}; got {value!r}")
        self.validate()

    def validate(self) -> None:
        """Rules beyond the field types (ranges, combinations)."""

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], *, source: str = "config") -> C:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping, got {type(data).__name__}")
        known = {f.name for f in public_fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; known: "
                              f"{', '.join(sorted(known))}")
        try:
            return cls(**data)
        except TypeError as e:
            raise ConfigError(f"{source}: {e}") from None

    @classmethod
    def from_file(cls: type[C], path: str | Path) -> C:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        text = path.read_text(encoding="utf-8")
        import yaml

        try:
            data = yaml.safe_load(text) if path.suffix.lower() in (".yaml", ".yml") \
                else json.loads(text)
        except (yaml.YAMLError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: cannot parse: {e}") from None
        return cls.from_dict(data or {}, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """The configuration fields as plain data (``dataclasses.asdict``, private ones left
        out and never copied)."""
        return {f.name: _plain(getattr(self, f.name)) for f in public_fields(self)}

    def updated(self: C, **overrides: Any) -> C:
        """A checked copy with the given (non-None) fields replaced."""
        data = self.to_dict()
        data.update({k: v for k, v in overrides.items() if v is not None})
        return type(self).from_dict(data)
