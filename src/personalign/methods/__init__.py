"""Every personalization method behind the one protocol, by name.

The CLI, the benchmarks and the service build methods from specs: ``vanilla``, ``fewshot``,
``fewshot:bm25``, ``fermi``, ``fspo:runs/fspo_x/final`` (``name`` or ``name:argument``)::

    models = SharedModels()                       # task, optimizer, embedder, scoring
    method = build("fermi", models, MethodSettings(preset="paper"))
    method.fit(user).predict(questions)
    method.save("user.json"); load("user.json", models)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

# The settings' ``fermi`` overrides are FermiConfig fields (the CLI builds options from them).
from personalign.fermi.config import PRESETS as FERMI_PRESETS
from personalign.fermi.config import FermiConfig
from personalign.runtime.config import Config
from personalign.runtime.errors import ConfigError, DataError
from personalign.runtime.personalizer import FORMAT, FORMAT_VERSION, Personalizer, SharedModels


@dataclass
class MethodSettings(Config):
    """Knobs shared by the methods of one run; each method takes the ones it needs."""

    seed: int = field(default=0, metadata={
        "help": "Seed of the protocol's split and of every method's sampling."})
    preset: Literal["paper", "quick", "tiny"] = field(default="quick", metadata={
        "help": "Fermi and OPRO preset: paper (T=10, K=4, L=5), quick (T=2, K=2) or tiny "
                "(T=1, K=1, L=2)."})
    fermi: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "FermiConfig overrides on top of the preset."})
    fewshot_k: int = field(default=3, metadata={
        "help": "Past opinions the few-shot baseline shows (and fermi+fewshot's context "
                "shots)."})
    retriever: Literal["embeddings", "bm25"] = field(default="embeddings", metadata={
        "help": "How the few-shot baseline picks its past opinions."})
    fspo_shots: int = field(default=8, metadata={
        "help": "Preference pairs FSPO methods show."})
    transfer_correctness: Literal["eval", "fit"] = field(default="eval", metadata={
        "help": "fermi_transfer: RoP correctness of a transferred pool measured again with the "
                "evaluating model on the user's past opinions (eval), or reused as measured "
                "with the fitting model (fit)."})

    def validate(self) -> None:
        if self.fewshot_k < 1 or self.fspo_shots < 0:
            raise ConfigError("fewshot_k must be >= 1 and fspo_shots >= 0")


def _registry() -> dict[str, type[Personalizer]]:
    from personalign.fermi.personalizer import (FermiFewShot, FermiNoRoP, FermiPersonalizer,
                                                FermiTransfer, OPRO)
    from personalign.fspo.personalizer import FSPO, Oracle, Pooled
    from personalign.methods.peers import PEERS  # DSPy is imported only when a peer runs
    from personalign.methods.prompting import FewShot, Profile, RandomChoice, Vanilla

    classes = (RandomChoice, Vanilla, Profile, FewShot, OPRO, FermiNoRoP, FermiPersonalizer,
               FermiFewShot, FermiTransfer, FSPO, Pooled, Oracle, *PEERS)
    return {**{c.name: c for c in classes}, **_REGISTERED}


#: methods added from outside the package (:func:`register`)
_REGISTERED: dict[str, type[Personalizer]] = {}


def register(method: type[Personalizer]) -> type[Personalizer]:
    """Add a method (a :class:`Personalizer` subclass with its own ``name``) to the registry,
    so that the benchmark, the projection and the service can build it by name; usable as a
    class decorator. A built-in name cannot be taken."""
    if not (isinstance(method, type) and issubclass(method, Personalizer)):
        raise ConfigError(f"register takes a Personalizer subclass, got {method!r}")
    if method.name in _registry() and _REGISTERED.get(method.name) is not method:
        raise ConfigError(f"method name {method.name!r} is taken")
    if not method.name or ":" in method.name or "," in method.name:
        raise ConfigError(f"method name {method.name!r}: no ':' or ','")
    _REGISTERED[method.name] = method
    return method


#: what ``--methods all`` runs: every method that needs no trained model (nor an extra: the
#: DSPy peers ``dspy-gepa``, ``dspy-miprov2``, ``dspy-bootstrap`` need ``personalign[peers]``)
DEFAULT_METHODS = ("random", "vanilla", "profile", "fewshot", "opro", "fermi_norop", "fermi")


def method_names() -> list[str]:
    return list(_registry())


def method_class(name: str) -> type[Personalizer]:
    registry = _registry()
    if name not in registry:
        raise ConfigError(f"unknown method {name!r}; known: {', '.join(registry)}")
    return registry[name]


def split_spec(spec: str) -> tuple[str, str | None]:
    name, sep, arg = spec.strip().partition(":")
    return name, (arg if sep else None)


def label(spec: str) -> str:
    """What reports call the method of ``spec`` ("FSPO (runs/x)")."""
    name, arg = split_spec(spec)
    return method_class(name).label + (f" ({arg})" if arg else "")


def parse_specs(text: str) -> list[str]:
    """Method specs from a comma list (``all``: :data:`DEFAULT_METHODS`), checked by name."""
    specs = [s.strip() for s in text.split(",") if s.strip()]
    if not specs or specs == ["all"]:
        return list(DEFAULT_METHODS)
    for spec in specs:
        method_class(split_spec(spec)[0])
    if len(set(specs)) != len(specs):
        raise ConfigError(f"a method is listed twice in {text!r}")
    return specs


def build(spec: str, models: SharedModels, settings: MethodSettings | None = None
          ) -> Personalizer:
    """A fresh (unfitted) method from its spec."""
    name, arg = split_spec(spec)
    return method_class(name).from_spec(models, arg, settings or MethodSettings())


def load(path: str | Path, models: SharedModels) -> Personalizer:
    """A personalizer saved by :meth:`Personalizer.save`. It must be loaded with the models it
    was fit with (a Fermi pool's correctness was measured with its task model)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read: {e}", path=str(path)) from None
    except json.JSONDecodeError as e:
        raise DataError(f"invalid JSON: {e.msg}", path=str(path), line=e.lineno) from None
    return from_saved(data, models, source=str(path))


def from_saved(data: Any, models: SharedModels, source: str = "saved personalizer"
               ) -> Personalizer:
    """A personalizer from what :meth:`Personalizer.saved` returned (a store keeps it as a
    JSON value rather than a file); ``source`` names it in errors."""
    path = source
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DataError("not a saved personalizer", path=str(path), field="format")
    if data.get("version") != FORMAT_VERSION:
        raise DataError(f"format version {data.get('version')!r} is not {FORMAT_VERSION}",
                        path=str(path), field="version")
    klass = method_class(str(data.get("method")))
    saved, now = data.get("models") or {}, models.identity()
    mismatch = [k for k in klass.depends_on if saved.get(k) != now.get(k)]
    if mismatch:
        raise ConfigError(f"{path} was fit with " + ", ".join(
            f"{k} {saved.get(k)!r}" for k in mismatch) + "; load it with the same models (now "
            + ", ".join(f"{k} {now[k]!r}" for k in mismatch) + ")")
    try:
        method = klass(models, **data["params"])
        method.user_id = data["user_id"]
        method.set_state(data["state"])
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"incomplete saved personalizer: {e}", path=str(path)) from None
    return method


__all__ = ["DEFAULT_METHODS", "FERMI_PRESETS", "FermiConfig", "MethodSettings", "build",
           "from_saved", "label", "load", "method_class", "method_names", "parse_specs",
           "register", "split_spec"]
