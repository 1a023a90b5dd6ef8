"""Log-probabilities of several completions of one prompt, sharing a single prompt pass.

FSPO prompts (N shots) are long and completions short, and every example scores at least two
completions (chosen, rejected) of the same prompt. Running the prompt once and continuing each
completion from its key/value cache roughly halves CPU cost against the usual concatenated
[prompt+chosen; prompt+rejected] batch. Gradients flow through the cache, so the same function
serves training (LoRA on the prompt positions too) and scoring.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch
from trl.trainer.utils import selective_log_softmax

from personalign.runtime.llm.prompt_cache import PromptCache

_EXAMPLE = re.compile(r"^# Example (\d+)\n", re.MULTILINE)


def drop_oldest_shots(prompt: str, fits: Callable[[str], bool]) -> tuple[str, int]:
    """Remove whole "# Example k" blocks, oldest first, until ``fits(prompt)``; the rest are
    renumbered from 1. Text before the first example (an oracle description) and the task with
    the final question are kept. Returns (prompt, number of shots dropped)."""
    dropped = 0
    while not fits(prompt):
        starts = [m.start() for m in _EXAMPLE.finditer(prompt)]
        task = prompt.rfind("# Task\n")
        if not starts or task < 0 or starts[0] > task:
            break
        end = starts[1] if len(starts) > 1 and starts[1] < task else task
        prompt = prompt[: starts[0]] + prompt[end:]
        dropped += 1
    if dropped:
        counter = iter(range(1, 10**6))
        prompt = _EXAMPLE.sub(lambda m: f"# Example {next(counter)}\n", prompt)
    return prompt, dropped


@dataclass
class EncodedExample:
    prompt_ids: list[int]
    completion_ids: list[list[int]]
    prompt_truncated: bool = False
    shots_dropped: int = 0


def encode(tokenizer, prompt: str, completions: list[str], *, max_prompt_tokens: int,
           max_completion_tokens: int) -> EncodedExample:
    """Token ids of a raw-text prompt and its completions (no chat template, no BOS).

    A completion that ends with the EOS text gets the EOS id; one without it gets EOS
    appended, so scoring always includes the end of the response. Over-long prompts lose
    whole shots, oldest first; if the rest is still too long, its END is kept (the final
    question stays). Over-long completions are cut at ``max_completion_tokens`` including EOS.
    """
    eos_text, eos_id = tokenizer.eos_token, tokenizer.eos_token_id

    def ids_of(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    prompt_ids = ids_of(prompt)
    dropped = 0
    if len(prompt_ids) > max_prompt_tokens:
        prompt, dropped = drop_oldest_shots(
            prompt, lambda text: len(ids_of(text)) <= max_prompt_tokens)
        prompt_ids = ids_of(prompt)
    truncated = len(prompt_ids) > max_prompt_tokens
    if truncated:
        prompt_ids = prompt_ids[-max_prompt_tokens:]
    completion_ids = []
    for text in completions:
        if eos_text and text.endswith(eos_text):
            text = text[: -len(eos_text)]
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][: max_completion_tokens - 1]
        completion_ids.append(ids + [eos_id])
    return EncodedExample(prompt_ids, completion_ids, truncated, dropped)


def completion_token_logps(model, prompt_ids: list[int], completion_ids: list[list[int]],
                           pad_id: int, prompt_cache: PromptCache | None = None,
                           cache_key: Hashable = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs [k, L] of k completions given one prompt, and their mask [k, L].
    With a ``prompt_cache`` (no gradients) the prompt's shared prefix is not run again."""
    device = next(model.parameters()).device
    k = len(completion_ids)
    width = max(len(c) for c in completion_ids)
    tokens = torch.full((k, width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((k, width), dtype=torch.float32, device=device)
    for i, ids in enumerate(completion_ids):
        tokens[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[i, : len(ids)] = 1.0
    if prompt_cache is not None:
        last_logits, cache = prompt_cache.prefill(model, cache_key, prompt_ids)
    else:
        prompt = torch.tensor([prompt_ids], dtype=torch.long, device=device)
        head = model(input_ids=prompt, use_cache=True, logits_to_keep=1)
        last_logits, cache = head.logits[:, -1:, :], head.cache
    # The last prompt position predicts every completion's first token.
    first_logits = last_logits.expand(k, 1, -1)
    if width > 1:
        cache.batch_repeat_interleave(k)
        attention = torch.cat([torch.ones((k, len(prompt_ids)), device=device), mask], dim=1)
        tail = model(input_ids=tokens[:, :-1], cache=cache,
                     attention_mask=attention[:, :-1].long(), use_cache=True)
        logits = torch.cat([first_logits, tail.logits], dim=1)
    else:
        logits = first_logits
    token_logps = selective_log_softmax(logits.float(), tokens)
    return token_logps * mask, mask


def completion_logps(model, example: EncodedExample, pad_id: int,
                     prompt_cache: PromptCache | None = None,
                     cache_key: Hashable = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs [k] of each completion, and the completion lengths [k]."""
    token_logps, mask = completion_token_logps(model, example.prompt_ids, example.completion_ids,
                                               pad_id, prompt_cache, cache_key)
    return token_logps.sum(dim=1), mask.sum(dim=1)
