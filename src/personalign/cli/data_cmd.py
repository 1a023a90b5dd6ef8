"""`personalign data validate|sample`: check a dataset file and summarize it."""

from __future__ import annotations

import json
import statistics
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from personalign.runtime.errors import DataError

app = typer.Typer(no_args_is_help=True)
console = Console()


class Format(str, Enum):
    auto = "auto"
    opinionqa = "opinionqa"
    globalopinionqa = "globalopinionqa"
    lamp = "lamp"
    preferences = "preferences"


def detect_format(path: Path) -> Format:
    """Guess the format from the suffix and, for JSON lines, the first record's keys."""
    if path.is_dir() or path.suffix == ".parquet":
        return Format.preferences
    if path.suffix == ".csv":
        return Format.globalopinionqa
    if path.suffix == ".json" and "questions" in path.name:
        return Format.lamp
    try:
        with open(path, encoding="utf-8-sig") as f:  # -sig: a byte-order mark is no key
            first = next((line for line in f if line.strip()), "")
        keys = set(json.loads(first)) if first.strip().startswith("{") else set()
    except (OSError, ValueError, RecursionError):  # ValueError: bad UTF-8 or JSON
        keys = set()  # the loader reports the problem with its line
    if {"chosen", "rejected"} & keys:
        return Format.preferences
    if path.suffix == ".json":
        return Format.lamp
    return Format.opinionqa


def _spread(counts: list[int]) -> tuple[str, str, str]:
    if not counts:
        return ("0", "0", "0")
    return (str(min(counts)), f"{statistics.median(counts):g}", str(max(counts)))


def summarize(path: Path, fmt: Format, outputs: Path | None = None) -> dict:
    """Load ``path`` as ``fmt`` (raising DataError on bad input) and count what it holds."""
    if fmt == Format.auto:
        fmt = detect_format(path)
    if fmt in (Format.opinionqa, Format.globalopinionqa):
        if fmt == Format.opinionqa:
            from personalign.runtime.data.opinionqa import load_opinionqa as load
        else:
            from personalign.runtime.data.globalopinionqa import load_globalopinionqa as load
        users = load(path)
        counts = [len(u.opinions) for u in users]
        return {"format": fmt.value, "users": len(users), "unit": "opinions",
                "items": sum(counts), "per_user": _spread(counts),
                "questions": len({o.qid or o.question for u in users for o in u.opinions})}
    if fmt == Format.lamp:
        from personalign.runtime.data.lamp import load_lamp

        examples = load_lamp(path, outputs)
        counts = [len(e.profile) for e in examples]
        return {"format": f"lamp ({examples[0].task})" if examples else "lamp",
                "users": len(examples), "unit": "profile items", "items": sum(counts),
                "per_user": _spread(counts),
                "options": len(examples[0].options) if examples else 0}
    from personalign.runtime.data.preferences import load_preferences

    pairs = load_preferences(path)
    per: dict[str, int] = {}
    for p in pairs:
        per[p.user_id] = per.get(p.user_id, 0) + 1
    return {"format": fmt.value, "users": len(per), "unit": "pairs", "items": len(pairs),
            "per_user": _spread(list(per.values())),
            "with_description": sum(p.user_description is not None for p in pairs)}


@app.command("validate")
def validate(path: Path = typer.Argument(..., help="Dataset file (or saved datasets folder)."),
             format: Format = typer.Option(Format.auto, "--format", "-f",
                                           help="Format (default: guessed from the file)."),
             outputs: Path = typer.Option(None, help="LaMP outputs file (default: the sibling "
                                          "*outputs*.json of the questions file).")) -> None:
    """Load a dataset with full checks; print a summary, or the first problem found."""
    if not path.exists():
        raise DataError("file not found", path=str(path))
    info = summarize(path, format, outputs)
    table = Table("format", "users", info["unit"], "min / median / max per user",
                  title=str(path))
    table.add_row(info["format"], str(info["users"]), str(info["items"]),
                  " / ".join(info["per_user"]))
    console.print(table)
    console.print("[green]valid[/]")


@app.command("sample")
def sample() -> None:
    """Print the path of the packaged sample dataset (4 fictional users, OpinionQA schema)."""
    from personalign.runtime.data.sample import sample_users_path

    print(sample_users_path())
