"""transformers backend (CPU or GPU) with a scoring engine built for many short items.

Scoring is dominated by the shared context (a candidate prompt, few-shot examples): the engine
encodes each distinct prefix once and reuses its KV cache for every item and option that
follows it, and applies the output projection only where a log-prob is read (Gemma's 262k-row
output layer is most of its weights). ``reference_scoring`` holds the plain implementation that
benchmarks and tests compare against. Greedy decoding checks drafts looked up in the text so far
(prompt-lookup decoding): a chat-format reply that copies its prompt takes fewer passes
(``benchmarks/lookup_decoding.py``).
"""

from __future__ import annotations

import copy
import logging
import threading
from dataclasses import dataclass
from typing import Iterator, Sequence

from personalign.runtime import models
from personalign.runtime.llm import debias
from personalign.runtime.llm.base import LLM, Generation, ProgressFn, transcript
from personalign.runtime.llm.types import (
    ChoiceItem,
    ChoiceResult,
    Prompt,
    SamplingParams,
    ScoringMethod,
)
from personalign.runtime.runs import model_identity
from personalign.runtime.settings import configure_threads

log = logging.getLogger(__name__)


def _torch():
    import torch

    return torch


# An option as the continuation ``text`` scoring reads: ``answer_start`` writes it (after a
# space, or bare at the start of a chat turn); a model trained on another format names its own.
DEFAULT_OPTION = " {option}"


@dataclass(frozen=True)
class Row:
    """One scoring row after the shared prefix: ``body`` tokens, then ``target`` tokens whose
    log-probs are summed (empty target: the caller reads the next-token distribution)."""

    body: tuple[int, ...]
    target: tuple[int, ...] = ()


class TransformersLLM(LLM):
    backend = "transformers"

    def __init__(self, model: str = models.FAST_TASK, *, dtype: str | None = None,
                 device: str = "cpu", threads: int | None = None, batch_size: int = 16,
                 cache=True, pack_weights: bool = True, max_padding: float = 0.15,
                 adapters: Sequence[str] = (), option_template: str = DEFAULT_OPTION,
                 option_eos: bool = False, name: str | None = None,
                 chat_scoring: bool | None = None, lookup_tokens: int = 8):
        """``adapters``: PEFT (LoRA) adapter folders merged into the weights in order, so a
        fine-tuned model runs on the same engine. ``option_template``/``option_eos``: how an
        option is written as the continuation that ``text`` scoring reads (a model trained on
        another completion format, such as FSPO's, names its own). ``chat_scoring``: choices
        scored through the chat template (None: as ``models.is_instruct`` says). ``dtype``:
        None runs the model's own (``models.engine_dtype``). ``lookup_tokens``: how many
        tokens greedy decoding drafts from the text so far (:func:`lookup_draft`), 0 for
        none."""
        super().__init__(cache=cache)
        torch = _torch()
        from transformers import AutoModelForCausalLM

        from personalign.runtime.llm.packed_linear import pack_linears
        from personalign.runtime.llm.prompt_cache import PromptCache

        configure_threads(threads)
        dtype = dtype or models.engine_dtype(model)
        self.path = models.resolve(model)
        self.model_id = model
        self.device = device
        self.batch_size = batch_size
        self.max_padding = max_padding
        with models.quiet_loading():
            self.tokenizer = models.load_tokenizer(self.path)
            self.model = AutoModelForCausalLM.from_pretrained(
                self.path, dtype=getattr(torch, dtype)).to(device).eval()
        self.adapters = tuple(str(a) for a in adapters)
        # Content digests: a retrained adapter under the same path must not hit the cache.
        self._adapter_ids = tuple(model_identity(a) for a in self.adapters)
        for adapter in self.adapters:
            from peft import PeftModel

            with models.peft_wrapping():
                self.model = PeftModel.from_pretrained(self.model, adapter).merge_and_unload()
            self.model.eval()
        if name:
            self.model_id = name
        self.option_template = option_template
        self.option_eos = option_eos
        self.dtype = dtype
        # oneDNN-packed linear weights (see packed_linear): same results, faster on CPU.
        self.packed_layers = pack_linears(self.model) if pack_weights and device == "cpu" else 0
        self.has_chat_template = bool(self.tokenizer.chat_template)
        if chat_scoring is None:
            chat_scoring = models.is_instruct(model)
        self.chat_scoring = bool(chat_scoring and self.has_chat_template)
        self.default_scoring = "letter"
        self._softcap = getattr(self.model.config, "final_logit_softcapping", None)
        self._lock = threading.Lock()  # one forward at a time per model (service threads)
        self._letter_ids: dict[str, int] = {}
        # Generation prompts often repeat (optimizer retries) or share a long head.
        self.prompt_cache = PromptCache()
        self.lookup_tokens = lookup_tokens
        self.forward_passes = 0  # of decoding, after the prompt (lookup drafts save them)

    def _identity(self) -> tuple[str, str]:
        # dtype and weight packing change results slightly, so they are part of the cache key.
        packed = "|packed" if self.packed_layers else ""
        extra = "".join(f"|adapter={a}" for a in self._adapter_ids)
        if (self.option_template, self.option_eos) != (DEFAULT_OPTION, False):
            extra += f"|option={self.option_template!r},eos={self.option_eos}"
        if self.chat_scoring:
            extra += "|chat"
        return (self.backend, f"{self.model_id}|{self.dtype}{packed}{extra}")

    # ------------------------------------------------------------------ tokens
    def encode(self, text: str, *, specials: bool = False) -> list[int]:
        return self.tokenizer(text, add_special_tokens=specials).input_ids

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    def option_ids(self, option: str) -> list[int]:
        """Tokens of an option as the continuation scored by ``text`` (after the prompt)."""
        text = self.answer_start(option) if self.option_template == DEFAULT_OPTION \
            else self.option_template.format(option=option)
        ids = self.encode(text)
        return ids + [self.tokenizer.eos_token_id] if self.option_eos else ids

    def letter_id(self, letter: str) -> int:
        """Token of the letter as the answer starts (``answer_start``); the first if it
        splits."""
        if letter not in self._letter_ids:
            self._letter_ids[letter] = self.encode(self.answer_start(letter))[0]
        return self._letter_ids[letter]

    def render(self, prompt: Prompt) -> str:
        """Chat messages through the chat template; raw text as is."""
        if isinstance(prompt, str):
            return prompt
        if self.has_chat_template:
            return self.tokenizer.apply_chat_template(prompt, tokenize=False,
                                                      add_generation_prompt=True)
        return transcript(prompt)  # base models have no template

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        text = self.render(prompt)
        # A chat template already wrote the special tokens.
        return self.encode(text, specials=isinstance(prompt, str) or not self.has_chat_template)

    # ------------------------------------------------------------------ engine
    def _logits(self, hidden, vocab: Sequence[int] | None = None):
        """Output logits at ``hidden``; with ``vocab``, only those rows of the output layer
        (letter scoring reads a handful of tokens out of Gemma's 262k)."""
        head = self.model.lm_head
        if vocab is None:
            logits = head(hidden).float()
        else:
            index = _torch().tensor(list(vocab), device=hidden.device)
            bias = None if head.bias is None else head.bias[index]
            logits = _torch().nn.functional.linear(hidden, head.weight[index], bias).float()
        if self._softcap:
            logits = self._softcap * _torch().tanh(logits / self._softcap)
        return logits

    def _prefix_kv(self, prefix_ids: list[int]):
        """KV cache of ``prefix_ids`` (None for an empty prefix). The prompt cache runs only
        the tokens after what this prefix shares with the previous one: a user's questions
        behind the same shots, or candidate prompts behind the same instruction."""
        if not prefix_ids:
            return None
        return self.prompt_cache.prefill(self.model, "score", prefix_ids)[1]

    def _run_rows(self, prefix_cache, prefix_len: int, rows: Sequence[Row]):
        """Hidden states (b, T, d) of right-padded ``body + target`` rows after the prefix."""
        torch = _torch()
        seqs = [list(r.body) + list(r.target) for r in rows]
        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(seqs), width), pad, dtype=torch.long, device=self.device)
        mask = torch.zeros((len(seqs), prefix_len + width), dtype=torch.long, device=self.device)
        mask[:, :prefix_len] = 1
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, prefix_len: prefix_len + len(s)] = 1
        cache = None
        if prefix_cache is not None:
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(len(seqs))
        out = self.model.get_decoder()(input_ids=ids, attention_mask=mask,
                                       cache=cache, use_cache=cache is not None)
        return out.last_hidden_state

    def _batches(self, rows: Sequence[Row]):
        """Index batches of rows sorted by length; a batch closes when it is full or when the
        next row would make padding more than ``max_padding`` of its real tokens (padded
        positions cost as much as real ones, and question lengths vary 3x in OpinionQA)."""
        length = [len(r.body) + len(r.target) for r in rows]
        batch: list[int] = []
        for i in sorted(range(len(rows)), key=length.__getitem__):
            real = sum(length[j] for j in batch) + length[i]
            if batch and (len(batch) == self.batch_size
                          or length[i] * (len(batch) + 1) > (1 + self.max_padding) * real):
                yield batch
                batch = []
            batch.append(i)
        if batch:
            yield batch

    def score_rows(self, prefix_ids: list[int], rows: Sequence[Row],
                   vocab: Sequence[int] | None = None) -> tuple[list, list[float]]:
        """For rows sharing ``prefix_ids``: the next-token log-softmax after each body (rows
        without target; over ``vocab`` only when given, else the whole vocabulary) and the
        summed log-prob of each row's target (rows with one)."""
        torch = _torch()
        # The prefix's last token moves into every body, so no body is empty and the first
        # target token is predicted from a position we compute.
        cached, lead = (prefix_ids[:-1], [prefix_ids[-1]]) if prefix_ids else ([], [])
        rows = [Row(tuple(lead) + r.body, r.target) for r in rows]
        next_logprobs: list = [None] * len(rows)
        target_sums = [0.0] * len(rows)
        with self._lock, torch.inference_mode():
            prefix_cache = self._prefix_kv(cached)
            for batch in self._batches(rows):
                hidden = self._run_rows(prefix_cache, len(cached), [rows[i] for i in batch])
                nexts, picks, targets = [], [], []
                for b, i in enumerate(batch):
                    row = rows[i]
                    n_body = len(row.body)
                    if not row.target:
                        nexts.append((i, hidden[b, n_body - 1]))
                    for j, tok in enumerate(row.target):
                        picks.append((i, hidden[b, n_body - 1 + j]))
                        targets.append(tok)
                if nexts:
                    logits = self._logits(torch.stack([h for _, h in nexts]), vocab)
                    for (i, _), lp in zip(nexts, torch.log_softmax(logits, dim=-1)):
                        next_logprobs[i] = lp
                if picks:
                    logprobs = torch.log_softmax(
                        self._logits(torch.stack([h for _, h in picks])), dim=-1)
                    chosen = logprobs[torch.arange(len(targets)), torch.tensor(targets)]
                    for (i, _), value in zip(picks, chosen.tolist()):
                        target_sums[i] += value
        return next_logprobs, target_sums

    # ------------------------------------------------------------------ LLM hooks
    def _score(self, items: Sequence[ChoiceItem], method: ScoringMethod,
               progress: ProgressFn) -> list[ChoiceResult]:
        torch = _torch()
        results: list[ChoiceResult] = []
        if method == "text-pmi":
            premise = self._premise_logliks(items)
        start = 0
        while start < len(items):
            # Items arrive sorted by prefix: one engine call per distinct prefix.
            end = start
            while end < len(items) and items[end].prefix == items[start].prefix:
                end += 1
            group = items[start:end]
            texts = [self.scored_text(it) for it in group]
            head, bodies = texts[0][0], [body for _, body in texts]
            # A rendered chat template already wrote the special tokens.
            prefix_ids = self.encode(head, specials=not self.chat_scoring)
            tokens = len(prefix_ids)
            if method == "letter":
                rows = [Row(tuple(self.encode(body))) for body in bodies]
                # Only the letters' rows of the output layer; renormalizing over each item's
                # letters below makes the result the same as with the full vocabulary.
                vocab = sorted({self.letter_id(x) for it in group for x in it.letters})
                column = {tok: k for k, tok in enumerate(vocab)}
                next_lp, _ = self.score_rows(prefix_ids, rows, vocab)
                for it, row, lp in zip(group, rows, next_lp):
                    raw = lp[[column[self.letter_id(x)] for x in it.letters]]
                    results.append(self._result(torch.log_softmax(raw, -1).tolist()))
                    tokens += len(row.body)
            elif method in ("text", *debias.TEXT_CORRECTIONS):
                rows, spans = [], []
                for it, text in zip(group, bodies):
                    body = tuple(self.encode(text))
                    spans.append((len(rows), len(it.options)))
                    rows += [Row(body, tuple(self.option_ids(o))) for o in it.options]
                    tokens += len(body) + sum(len(r.target) for r in rows[-len(it.options):])
                _, sums = self.score_rows(prefix_ids, rows)
                for it, (first, n) in zip(group, spans):
                    raw = sums[first: first + n]
                    if method == "text-mean":
                        lp = debias.per_unit(raw, [len(r.target) for r in rows[first: first + n]])
                    elif method == "text-char":
                        lp = debias.per_unit(raw, [len(self.option_template.format(option=o))
                                                   for o in it.options])
                    elif method == "text-pmi":
                        lp = debias.pmi(raw, [premise[o] for o in it.options])
                    else:
                        lp = torch.log_softmax(torch.tensor(raw), -1).numpy()
                    results.append(self._result(lp.tolist()))
            else:
                raise ValueError(f"unknown scoring method {method!r}")
            self._count(calls=len(group), prompt_tokens=tokens)
            progress(len(group))
            start = end
        return results

    def _premise_logliks(self, items: Sequence[ChoiceItem]) -> dict[str, float]:
        """log P(option | domain premise) of every distinct option of the call: one engine
        group after the premise (survey options repeat across questions)."""
        options = list(dict.fromkeys(o for it in items for o in it.options))
        premise_ids = self.encode(debias.PMI_PREMISE, specials=True)
        rows = [Row((), tuple(self.option_ids(o))) for o in options]
        _, sums = self.score_rows(premise_ids, rows)
        self._count(calls=1, prompt_tokens=len(premise_ids) + sum(len(r.target) for r in rows))
        return dict(zip(options, sums))

    @staticmethod
    def _result(logprobs: list[float]) -> ChoiceResult:
        return ChoiceResult(logprobs=logprobs,
                            choice=max(range(len(logprobs)), key=logprobs.__getitem__))

    def _loglikelihood(self, requests: Sequence[tuple[str, str]],
                       progress: ProgressFn) -> list[float]:
        out = [0.0] * len(requests)
        by_context: dict[str, list[int]] = {}
        for i, (context, _) in enumerate(requests):
            by_context.setdefault(context, []).append(i)
        for context, idx in by_context.items():
            prefix_ids = self.encode(context, specials=True)
            rows = [Row((), tuple(self.encode(requests[i][1]))) for i in idx]
            _, sums = self.score_rows(prefix_ids, rows)
            for i, s in zip(idx, sums):
                out[i] = s
            self._count(calls=len(idx), prompt_tokens=len(prefix_ids) + sum(
                len(r.target) for r in rows))
            progress(len(idx))
        return out

    def next_token_logprobs(self, prompt: Prompt, top_k: int = 20) -> list[tuple[str, float]]:
        """The ``top_k`` most likely next tokens after ``prompt`` with their log-probs
        (what OpenAI-style ``top_logprobs`` reports for the first generated token)."""
        torch = _torch()
        ids = self.prompt_ids(prompt)
        next_lp, _ = self.score_rows(ids, [Row(())])
        values, indices = torch.topk(next_lp[0], top_k)
        return [(self.tokenizer.decode([int(i)]), float(v)) for v, i in zip(values, indices)]

    def _generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Generation]:
        torch = _torch()
        out = []
        for prompt in prompts:
            ids = self.prompt_ids(prompt)
            sample = params.temperature > 0
            n = params.n if sample else 1
            with self._lock, torch.inference_mode():
                rows = self._decode(ids, n, params)
            texts = [_cut_at_stop(self.tokenizer.decode(r, skip_special_tokens=True),
                                  params.stop) for r in rows]
            if not sample:
                texts = texts * params.n  # greedy samples are identical
            out.append(Generation(texts, prompt_tokens=len(ids),
                                  completion_tokens=sum(len(r) for r in rows)))
        return out

    def _stop_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids

    def _stream(self, prompt: Prompt, params: SamplingParams, usage: Generation
                ) -> Iterator[str]:
        torch = _torch()
        ids = self.prompt_ids(prompt)
        usage.prompt_tokens = len(ids)
        row: list[int] = []
        shown = ""
        with self._lock, torch.inference_mode():
            for _, token in self._tokens(ids, 1, params):
                row.append(token)
                text = _cut_at_stop(self.tokenizer.decode(row, skip_special_tokens=True),
                                    params.stop)
                settled = _settled(text, params.stop)
                if len(settled) > len(shown) and settled.startswith(shown):
                    yield settled[len(shown):]
                    shown = settled
        usage.completion_tokens = len(row)
        text = _cut_at_stop(self.tokenizer.decode(row, skip_special_tokens=True), params.stop)
        yield text[len(shown):]

    def _decode(self, ids: list[int], n: int, params: SamplingParams) -> list[list[int]]:
        rows: list[list[int]] = [[] for _ in range(n)]
        for row, token in self._tokens(ids, n, params):
            rows[row].append(token)
        return rows

    def _tokens(self, ids: list[int], n: int, params: SamplingParams
                ) -> Iterator[tuple[int, int]]:
        """``n`` continuations of ``ids``, as (sample, token) the moment each token is picked:
        the prompt runs once (its shared prefix with the previous prompt not at all), the
        samples decode together from copies of its cache, and a sample leaves the batch at
        EOS, a stop string or ``max_tokens``. One greedy continuation checks a draft of
        tokens looked up in the text so far in each forward pass (:meth:`_lookup_tokens`)."""
        torch = _torch()
        generator = torch.Generator(device=self.device).manual_seed(params.seed)
        logits, cache = self.prompt_cache.prefill(self.model, "generate", ids)
        logits = logits[:, -1, :].expand(n, -1)
        if n == 1 and params.temperature <= 0 and self.lookup_tokens > 0:
            yield from ((0, token) for token in self._lookup_tokens(ids, logits, cache, params))
            return
        if n > 1:
            cache.batch_repeat_interleave(n)
        stop_ids = self._stops(params)
        rows: list[list[int]] = [[] for _ in range(n)]
        alive = list(range(n))
        for _ in range(params.max_tokens):
            picked = _pick_tokens(logits, params, generator)
            keep = []
            for k, (row, tok) in enumerate(zip(alive, picked.tolist())):
                if tok in stop_ids:
                    continue
                rows[row].append(tok)
                yield row, tok
                if self._ended(rows[row], params):
                    continue
                keep.append(k)
            if not keep:
                break
            if len(keep) < len(alive):
                index = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                picked = picked[index]
                alive = [alive[k] for k in keep]
            self.forward_passes += 1
            logits = self.model(input_ids=picked[:, None], cache=cache,
                                use_cache=True, logits_to_keep=1).logits[:, -1, :]

    def _stops(self, params: SamplingParams) -> set[int]:
        return set() if params.ignore_eos else self._stop_ids()

    def _ended(self, row: list[int], params: SamplingParams) -> bool:
        """The row is done after its last token: ``max_tokens`` reached or a stop string
        written."""
        return len(row) >= params.max_tokens or bool(params.stop and any(
            s in self.tokenizer.decode(row[-32:]) for s in params.stop))

    def _lookup_tokens(self, ids: list[int], logits, cache, params: SamplingParams
                       ) -> Iterator[int]:
        """Greedy decoding that drafts the next tokens from the text so far (prompt-lookup
        decoding): chat formats and structured replies copy much of their prompt (DSPy's
        field markers, a quoted option). One forward pass runs the picked token and its draft;
        the draft's tokens are kept while each is the argmax after the ones before it, so the
        text is plain greedy decoding's (up to float rounding between batched and single-token
        passes) in fewer passes. A cache that cannot drop the rejected tail (a sliding-window
        layer) decodes without drafts."""
        torch = _torch()
        stop_ids = self._stops(params)
        context, row = list(ids), []
        pending = [int(logits[0].argmax())]  # to write; the last is not in the cache yet
        drafting = True
        while True:
            for t in pending:
                if t in stop_ids:
                    return
                row.append(t)
                context.append(t)
                yield t
                if self._ended(row, params):
                    return
            token = pending[-1]
            room = params.max_tokens - len(row) - 1  # the pass picks one token after the draft
            draft = lookup_draft(context, min(self.lookup_tokens, room)) if drafting else []
            step = torch.tensor([[token, *draft]], device=self.device)
            self.forward_passes += 1
            picks = self.model(input_ids=step, cache=cache, use_cache=True,
                               logits_to_keep=step.shape[1]).logits[0].argmax(dim=-1).tolist()
            kept = 0
            while kept < len(draft) and picks[kept] == draft[kept]:
                kept += 1
            if kept < len(draft):
                try:
                    cache.crop(-(len(draft) - kept))  # the rejected draft's keys and values
                except (RuntimeError, ValueError) as e:  # e.g. a full sliding-window layer
                    log.debug("no lookup drafts: %s", e)
                    drafting = False  # and the text so far runs again, without the tail
                    cache = self.model(input_ids=torch.tensor([context + draft[:kept]],
                                                              device=self.device),
                                       use_cache=True, logits_to_keep=1).cache
            pending = [*draft[:kept], picks[kept]]


def lookup_draft(context: Sequence[int], k: int, longest: int = 3) -> list[int]:
    """Up to ``k`` tokens that followed the latest earlier occurrence of the context's last
    ``longest`` tokens (or, failing that, of fewer, down to one): the draft of prompt-lookup
    decoding."""
    if k <= 0:
        return []
    for n in range(min(longest, len(context) - 1), 0, -1):
        tail = list(context[-n:])
        for start in range(len(context) - n - 1, -1, -1):
            if context[start] == tail[0] and list(context[start:start + n]) == tail:
                return list(context[start + n:start + n + k])
    return []


def _settled(text: str, stop: Sequence[str]) -> str:
    """What of a growing text cannot change any more: not a trailing half of a character
    (decoded as U+FFFD) nor a tail that may be the start of a stop string."""
    text = text.rstrip("\ufffd")
    hold = max((k for s in stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
    return text[:len(text) - hold]


def _pick_tokens(logits, params: SamplingParams, generator):
    """Greedy at temperature 0; otherwise a sample from the temperature-scaled distribution,
    restricted to the nucleus of mass ``top_p``."""
    torch = _torch()
    if params.temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs > params.top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        return order.gather(-1, torch.multinomial(sorted_probs, 1, generator=generator))[:, 0]
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def _cut_at_stop(text: str, stop: Sequence[str]) -> str:
    cut = min((text.find(s) for s in stop if s and s in text), default=-1)
    return text[:cut] if cut >= 0 else text
