"""Hard limits on what a run may spend: LLM calls, tokens and wall time, per user and per run.

A unit of work runs under an :class:`Allowance` (what is left of its user's and its run's
limits). :func:`watch` attaches an observer to every LLM of the shared models that charges
the allowance as each call is counted; the charge that goes over raises
:class:`BudgetExceeded`, which ends the unit before it is saved. Units are atomic, so a
stopped unit leaves nothing half-done: a rerun with a raised limit computes it again from the
start and gets the same result.

``BudgetExceeded`` is a ``BaseException`` (like ``KeyboardInterrupt``) so that a method's
``except Exception`` around an unreliable optimizer reply does not swallow it.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Iterator

from personalign.runtime.config import Config
from personalign.runtime.errors import ConfigError
from personalign.runtime.llm.base import CallObserver
from personalign.runtime.llm.types import Usage


@dataclass
class Limits(Config):
    """Hard limits (None: unlimited). Per user: over all of a user's saved units, this session
    and earlier ones. Per run: over the saved units of the run's users; the run's wall time is
    this session's. With several workers, the users in flight when the run limit is reached
    each finish or stop on their own allowance, so a run may pass its limit by up to that.
    Limits are not run inputs: a rerun with raised limits continues the run."""

    user_calls: int | None = field(default=None, metadata={
        "help": "Stop a user after this many LLM calls over all of its saved units (a rerun "
                "with a raised limit continues)."})
    user_tokens: int | None = field(default=None, metadata={
        "help": "Stop a user after this many LLM tokens (prompt + completion) over all of "
                "its saved units."})
    user_seconds: float | None = field(default=None, metadata={
        "help": "Stop a user after this many seconds over all of its saved units."})
    run_calls: int | None = field(default=None, metadata={
        "help": "Stop the run after this many LLM calls over all users."})
    run_tokens: int | None = field(default=None, metadata={
        "help": "Stop the run after this many LLM tokens over all users."})
    run_seconds: float | None = field(default=None, metadata={
        "help": "Stop the run after this many seconds of this session."})

    def validate(self) -> None:
        for name, value in self.to_dict().items():
            if value is not None and value <= 0:
                raise ConfigError(f"limit {name} must be > 0, got {value}")


@dataclass(frozen=True)
class Spend:
    """What has been spent: LLM calls, tokens (prompt + completion) and seconds."""

    calls: int = 0
    tokens: int = 0
    seconds: float = 0.0

    def __add__(self, other: "Spend") -> "Spend":
        return Spend(self.calls + other.calls, self.tokens + other.tokens,
                     self.seconds + other.seconds)

    @classmethod
    def of_usage(cls, usage: dict, seconds: float = 0.0) -> "Spend":
        """The spend of a usage dict keyed by model (``{model: Usage.as_dict()}``)."""
        return cls(sum(u.get("calls", 0) for u in usage.values()),
                   sum(u.get("prompt_tokens", 0) + u.get("completion_tokens", 0)
                       for u in usage.values()), seconds)


class BudgetExceeded(BaseException):
    """A limit was reached; ``reason`` names it ("user_calls 500 reached")."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class Allowance:
    """What one piece of work may still spend (None: unlimited), checked on every charge.
    ``deadline`` is a wall-clock time (``time.time()``) for the run's wall limit."""

    calls: int | None = None
    tokens: int | None = None
    seconds: float | None = None
    deadline: float | None = None
    names: dict[str, str] = field(default_factory=dict)  # which limit each bound comes from
    spent: Spend = Spend()
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def remaining(cls, limits: Limits, user: Spend, run: Spend,
                  deadline: float | None) -> "Allowance":
        """The tighter of the user's and the run's remaining calls and tokens; the user's
        remaining seconds; the run's deadline."""
        bounds: dict[str, tuple[float, str]] = {}
        for kind in ("calls", "tokens"):
            for scope, spent in (("user", user), ("run", run)):
                limit = getattr(limits, f"{scope}_{kind}")
                if limit is not None:
                    left = limit - getattr(spent, kind)
                    if kind not in bounds or left < bounds[kind][0]:
                        bounds[kind] = (left, f"{scope}_{kind} {limit}")
        if limits.user_seconds is not None:
            bounds["seconds"] = (limits.user_seconds - user.seconds,
                                 f"user_seconds {limits.user_seconds:g}")
        if deadline is not None:
            bounds["deadline"] = (deadline, f"run_seconds {limits.run_seconds:g}")
        return cls(**{k: v for k, (v, _) in bounds.items()},
                   names={k: name for k, (_, name) in bounds.items()})

    def exhausted(self) -> str | None:
        """The limit already reached before any work (None: there is room)."""
        for kind in ("calls", "tokens", "seconds"):
            left = getattr(self, kind)
            if left is not None and left <= 0:
                return f"{self.names[kind]} reached"
        if self.deadline is not None and time.time() >= self.deadline:
            return f"{self.names['deadline']} reached"
        return None

    def charge(self, calls: int = 0, tokens: int = 0) -> None:
        self.spent = self.spent + Spend(calls, tokens)
        if self.calls is not None and self.spent.calls > self.calls:
            raise BudgetExceeded(f"{self.names['calls']} reached")
        if self.tokens is not None and self.spent.tokens > self.tokens:
            raise BudgetExceeded(f"{self.names['tokens']} reached")
        if self.seconds is not None and time.perf_counter() - self.started > self.seconds:
            raise BudgetExceeded(f"{self.names['seconds']} reached")
        if self.deadline is not None and time.time() > self.deadline:
            raise BudgetExceeded(f"{self.names['deadline']} reached")


class _Charging(CallObserver):
    """Charges an allowance with what each observed call spent."""

    def __init__(self, allowance: Allowance):
        self.allowance = allowance

    def after_call(self, llm, kind, spent: Usage) -> None:
        self.allowance.charge(spent.calls, spent.prompt_tokens + spent.completion_tokens)


@contextlib.contextmanager
def watch(models, allowance: Allowance) -> Iterator[Allowance]:
    """Charge ``allowance`` for every LLM call of ``models`` (a ``SharedModels``) inside the
    block, from whichever thread makes it (the DSPy peers' loopback server);
    :class:`BudgetExceeded` is raised from the call that goes over."""
    with models.observing(_Charging(allowance)):
        yield allowance
