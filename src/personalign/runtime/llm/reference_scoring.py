"""Plain scoring, one item at a time with full-sequence forwards and full logits.

The engine in ``transformers_backend`` must give the same choices and log-probs as this;
benchmarks and tests compare the two on the same token ids.
"""

from __future__ import annotations

from typing import Sequence

from personalign.runtime.llm.types import ChoiceItem, ChoiceResult, ScoringMethod


def plain_score(llm, items: Sequence[ChoiceItem], method: ScoringMethod) -> list[ChoiceResult]:
    """Score with ``llm`` (a TransformersLLM) without prefix caching, projection pruning or
    packed weights."""
    import torch

    from personalign.runtime.llm.packed_linear import plain_linears

    results = []
    with torch.inference_mode(), plain_linears(llm.model):
        for item in items:
            context = llm.encode(item.prefix, specials=True) + llm.encode(item.prompt)
            if method == "letter":
                logits = llm.model(input_ids=torch.tensor([context])).logits[0, -1].float()
                lp = torch.log_softmax(logits, -1)[[llm.letter_id(x) for x in item.letters]]
            elif method == "text":
                sums = []
                for option in item.options:
                    target = llm.option_ids(option)
                    ids = torch.tensor([context + target])
                    logits = llm.model(input_ids=ids).logits[0].float()
                    logprobs = torch.log_softmax(logits[len(context) - 1: -1], -1)
                    sums.append(float(logprobs[torch.arange(len(target)),
                                               torch.tensor(target)].sum()))
                lp = torch.tensor(sums)
            else:
                raise ValueError(f"plain scoring has no method {method!r}")
            norm = torch.log_softmax(lp, -1).tolist()
            results.append(ChoiceResult(norm, max(range(len(norm)), key=norm.__getitem__)))
    return results
