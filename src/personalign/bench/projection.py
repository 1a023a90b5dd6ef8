"""What a benchmark run will spend, projected from its config and its users before it starts.

Per (method, phase): LLM calls and tokens for an average user, and for the whole run, summed
from each method's own projection (``Personalizer.project``: the counts follow the method's
algorithm; tokens are estimated at 4 characters a token). Optimizer retries and cache hits are
not projected: a projection is an expected upper bound of calls without retries, not a
measurement.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

from personalign.methods import MethodSettings, method_class, split_spec


def project_run(specs: Sequence[str], splits: Sequence, settings: MethodSettings
                ) -> dict[str, dict[str, dict[str, float]]]:
    """Method -> phase -> {"calls_per_user", "tokens_per_user", "calls", "tokens"} over the
    run's users (``splits``: :class:`~personalign.bench.runner.UserSplit`)."""
    total: dict[str, dict[str, dict[str, float]]] = {}
    for spec in specs:
        phases: dict[str, dict[str, float]] = defaultdict(lambda: {"calls": 0, "tokens": 0})
        for split in splits:
            name, arg = split_spec(spec)
            for phase, cost in method_class(name).project_spec(
                    arg, split.train.opinions, split.test, settings).items():
                phases[phase]["calls"] += cost.calls
                phases[phase]["tokens"] += cost.tokens
        n = max(1, len(splits))
        total[spec] = {phase: {**c, "calls_per_user": c["calls"] / n,
                               "tokens_per_user": c["tokens"] / n}
                       for phase, c in phases.items()}
    return total
