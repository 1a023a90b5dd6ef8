"""Reuse of a prompt's key/value cache across calls that share a token prefix.

Consecutive requests often repeat most of their prompt: Fermi's optimizer retries the same
meta-prompt, and a user's FSPO queries share the same N shots. Keeping the KV cache of the last
prompt per key and running only the tokens after the longest common prefix gives the same
logits (to float rounding) for a fraction of the prefill. Inference only: keys and values are
detached, so the cache must be cleared when the weights change.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Hashable, Sequence

import torch

log = logging.getLogger(__name__)


class PromptCache:
    """The KV cache of the last prompt run per key (a model, an adapter on or off)."""

    def __init__(self, min_shared: int = 8):
        self._last: dict[Hashable, tuple[list[int], object]] = {}
        self.min_shared = min_shared  # below this, copying the cache costs more than it saves
        self.reused_tokens = 0
        self.run_tokens = 0

    def _reusable(self, key: Hashable, prompt_ids: Sequence[int]):
        """(a private copy of the cached KV cropped to the shared prefix, its length)."""
        ids, kv = self._last.get(key, ((), None))
        shared = 0
        for a, b in zip(ids, prompt_ids):
            if a != b:
                break
            shared += 1
        shared = min(shared, len(prompt_ids) - 1)  # run one token at least: its logits
        if kv is None or shared < self.min_shared:
            return None, 0
        cache = copy.deepcopy(kv)
        if len(ids) > shared:
            try:
                cache.crop(-(len(ids) - shared))  # transformers 5: a negative count removes
            except (RuntimeError, ValueError) as e:  # e.g. a full sliding-window layer
                log.debug("prompt cache not reusable: %s", e)
                return None, 0
        return cache, shared

    def prefill(self, model, key: Hashable, prompt_ids: Sequence[int]):
        """(logits at the last prompt position [1, 1, V], a private copy of the KV cache)."""
        device = next(model.parameters()).device
        cache, shared = self._reusable(key, prompt_ids)
        new = torch.tensor([list(prompt_ids[shared:])], dtype=torch.long, device=device)
        out = model(input_ids=new, cache=cache, use_cache=True, logits_to_keep=1)
        self._last[key] = (list(prompt_ids), copy.deepcopy(out.cache))
        self.reused_tokens += shared
        self.run_tokens += len(prompt_ids) - shared
        return out.logits[:, -1:, :], out.cache

    def clear(self) -> None:
        self._last.clear()
