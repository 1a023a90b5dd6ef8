"""What a benchmark run will spend, projected from its config and its users before it starts.

Per (method, phase): LLM calls and tokens for an average user, and for the whole run. The
counts follow each method's algorithm (Fermi: one scoring pass of the initial prompt on the
optimization opinions, then T iterations of K optimizer calls and K scoring passes, the pool
scored on the demonstration opinions, one scored item per test question; the DSPy peers by their
budget rule, :meth:`personalign.methods.peers.DSPyPeer.project`); tokens are estimated
at 4 characters a token, the estimate ``LLM.count_tokens`` makes without a tokenizer. Optimizer
retries and cache hits are not projected: a projection is an expected upper bound of calls
without retries, not a measurement.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

from personalign.fermi.baselines import answered_block, vanilla_prompt
from personalign.fermi.config import preset as fermi_preset
from personalign.fermi.optimizer import choice_item
from personalign.methods import MethodSettings, method_class, split_spec
from personalign.runtime.data.records import Opinion

CHARS_PER_TOKEN = 4
META_PROMPT_OVERHEAD = 200      # tokens of the meta-prompt's fixed instructions
PROMPT_TOKENS = 60              # a written prompt (Fermi, OPRO, the profile prompt)


def _item_tokens(questions: Sequence[Opinion]) -> int:
    """Tokens of the questions asked with the task instruction."""
    return sum(len(choice_item(vanilla_prompt(), q).prompt) + len(vanilla_prompt())
               for q in questions) // CHARS_PER_TOKEN


def _shots_tokens(shots: Sequence[Opinion], k: int) -> int:
    """Tokens of k past opinions shown before a question (the user's average opinion)."""
    return k * sum(len(answered_block(o)) for o in shots) // CHARS_PER_TOKEN \
        // max(1, len(shots))


def project_unit(spec: str, shots: Sequence[Opinion], test: Sequence[Opinion],
                 settings: MethodSettings) -> dict[str, dict[str, int]]:
    """Phase -> {"calls", "tokens"} for one method on one user."""
    name, _ = split_spec(spec)
    klass = method_class(name)
    out: dict[str, dict[str, int]] = {}
    if name == "random":
        return out
    test_tokens = _item_tokens(test)
    if name in ("vanilla", "profile"):
        extra = PROMPT_TOKENS * len(test) if name == "profile" else 0
        return {f"{name}/predict": {"calls": len(test), "tokens": test_tokens + extra}}
    if name == "fewshot":
        per_question = _shots_tokens(shots, settings.fewshot_k)
        return {"fewshot/predict": {"calls": len(test),
                                    "tokens": test_tokens + per_question * len(test)}}
    if hasattr(klass, "project"):  # the DSPy peers project themselves (their budget rule)
        return klass.project(shots, test, settings)
    if hasattr(klass, "mode"):  # Fermi, Fermi w/o RoP, OPRO, Fermi + few-shot
        cfg = fermi_preset(settings.preset, seed=settings.seed,
                           **{**klass.preset_overrides(settings), **settings.fermi})
        n_opt = min(len(shots) - 1, max(1, round(len(shots) * cfg.optimization_fraction))) \
            if cfg.optimization_fraction < 1.0 else len(shots)
        opt, demo = shots[:n_opt], shots[n_opt:]
        opt_tokens = _item_tokens(opt)
        samples = cfg.samples_per_iteration or cfg.num_candidates
        prompts = 1 + cfg.iterations * samples
        pool = cfg.num_candidates if cfg.final_pool == "last_k" else cfg.memory_size
        meta = (META_PROMPT_OVERHEAD + opt_tokens
                + cfg.memory_size * PROMPT_TOKENS + cfg.failure_case_cap * 40)
        reply = cfg.optimizer_max_tokens or PROMPT_TOKENS + cfg.optimizer_token_margin
        mode = klass.mode
        # past opinions shown with each predicted question (Fermi + few-shot), and with each
        # scored one under context_at_fit
        context = _shots_tokens(shots, cfg.context_shots)
        fit_context = context if cfg.context_at_fit else 0
        out[f"{mode}/score"] = {"calls": prompts * len(opt),
                                "tokens": prompts * (opt_tokens + (PROMPT_TOKENS + fit_context)
                                                     * len(opt))}
        out[f"{mode}/optimize"] = {"calls": cfg.iterations * samples,
                                   "tokens": cfg.iterations * samples * (meta + reply)}
        if cfg.rop_include_demo and demo:
            out[f"{mode}/pool"] = {"calls": pool * len(demo),
                                   "tokens": pool * (_item_tokens(demo)
                                                     + (PROMPT_TOKENS + fit_context)
                                                     * len(demo))}
        out[f"{name}/predict"] = {"calls": len(test),
                                  "tokens": test_tokens + (PROMPT_TOKENS + context) * len(test)}
        return out
    # FSPO, pooled, oracle: the shots' preference pairs before every question, one
    # text-scoring call per option.
    shot_tokens = sum(len(answered_block(o)) for o in shots[:settings.fspo_shots]) \
        // CHARS_PER_TOKEN
    options = sum(len(q.options) for q in test)
    return {f"{name}/predict": {"calls": options,
                                "tokens": test_tokens + shot_tokens * len(test)}}


def project_run(specs: Sequence[str], splits: Sequence, settings: MethodSettings
                ) -> dict[str, dict[str, dict[str, float]]]:
    """Method -> phase -> {"calls_per_user", "tokens_per_user", "calls", "tokens"} over the
    run's users (``splits``: :class:`~personalign.bench.runner.UserSplit`)."""
    total: dict[str, dict[str, dict[str, float]]] = {}
    for spec in specs:
        phases: dict[str, dict[str, float]] = defaultdict(lambda: {"calls": 0, "tokens": 0})
        for split in splits:
            for phase, cost in project_unit(spec, split.train.opinions, split.test,
                                            settings).items():
                phases[phase]["calls"] += cost["calls"]
                phases[phase]["tokens"] += cost["tokens"]
        n = max(1, len(splits))
        total[spec] = {phase: {**c, "calls_per_user": c["calls"] / n,
                               "tokens_per_user": c["tokens"] / n}
                       for phase, c in phases.items()}
    return total
