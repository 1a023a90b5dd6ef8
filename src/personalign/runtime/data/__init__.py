"""Data records and loaders."""

from personalign.runtime.data.records import Opinion, PreferencePair, User

__all__ = ["Opinion", "PreferencePair", "User"]
