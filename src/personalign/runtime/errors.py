"""Errors that front ends report as one clear line (no traceback) with a non-zero exit."""

from __future__ import annotations


class PersonalignError(Exception):
    """Base class for errors that are the user's to fix (bad input, missing model, bad config)."""


class DataError(PersonalignError):
    """Bad input data; names the file, the line (1-based) and the field when known."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 field: str | None = None):
        self.path, self.line, self.field, self.reason = path, line, field, message
        where = ""
        if path:
            where = str(path)
            if line is not None:
                where += f":{line}"
            where += ": "
        if field:
            where += f"field '{field}': "
        super().__init__(where + message)


class ModelError(PersonalignError):
    """A model could not be found, prepared or loaded."""


class ConfigError(PersonalignError):
    """An invalid configuration value."""


class NotFoundError(PersonalignError):
    """Something asked for by name (a user, a job) does not exist."""
