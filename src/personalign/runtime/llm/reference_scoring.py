"""Plain scoring, one item at a time with full-sequence forwards and full logits.

The engine in ``transformers_backend`` must give the same choices and log-probs as this;
benchmarks and tests compare the two on the same token ids.
"""

from __future__ import annotations

from typing import Sequence

from personalign.runtime.llm.types import ChoiceItem, ChoiceResult, ScoringMethod


def plain_raw(llm, item: ChoiceItem, method: ScoringMethod,
              context: list[int] | None = None) -> list[float]:
    """Unnormalized scores of one item with ``llm`` (a TransformersLLM): its letters'
    next-token log-probs ("letter") or its options' summed log-likelihoods ("text") after
    ``context`` (by default the item's own tokens: prefix then prompt). Without prefix
    caching, projection pruning or packed weights; call under ``torch.inference_mode``."""
    import torch

    from personalign.runtime.llm.packed_linear import plain_linears

    if context is None:
        context = llm.encode(item.prefix, specials=True) + llm.encode(item.prompt)
    with plain_linears(llm.model):
        if method == "letter":
            logits = llm.model(input_ids=torch.tensor([context])).logits[0, -1].float()
            lp = torch.log_softmax(logits, -1)[[llm.letter_id(x) for x in item.letters]]
            return lp.tolist()
        if method == "text":
            sums = []
            for option in item.options:
                target = llm.option_ids(option)
                ids = torch.tensor([context + target])
                logits = llm.model(input_ids=ids).logits[0].float()
                logprobs = torch.log_softmax(logits[len(context) - 1: -1], -1)
                sums.append(float(logprobs[torch.arange(len(target)),
                                           torch.tensor(target)].sum()))
            return sums
    raise ValueError(f"plain scoring has no method {method!r}")


def plain_score(llm, items: Sequence[ChoiceItem], method: ScoringMethod) -> list[ChoiceResult]:
    """Score with ``llm`` (a TransformersLLM) without prefix caching, projection pruning or
    packed weights."""
    import torch

    results = []
    with torch.inference_mode():
        for item in items:
            norm = torch.log_softmax(torch.tensor(plain_raw(llm, item, method)), -1).tolist()
            results.append(ChoiceResult(norm, max(range(len(norm)), key=norm.__getitem__)))
    return results
