"""The project's own small sample dataset: 4 fictional users, 32 opinions each, in the
OpinionQA schema (same 12 profile fields), so the main job runs without external data."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from personalign.runtime.data.opinionqa import load_opinionqa
from personalign.runtime.data.records import User

SAMPLE_FILE = "sample_users.jsonl"


def sample_users_path() -> Path:
    """Filesystem path of the packaged sample JSONL (installed as package data)."""
    resource = resources.files("personalign").joinpath("data", SAMPLE_FILE)
    # Wheels and editable installs place package data on disk; as_file covers zipped installs.
    with resources.as_file(resource) as path:
        return Path(path)


def load_sample_users() -> list[User]:
    """The 4 sample users (rural retiree, urban student, suburban parent, small-business owner)."""
    return load_opinionqa(sample_users_path())
