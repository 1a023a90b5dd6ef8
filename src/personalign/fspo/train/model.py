"""A personalized model: base LM (+ SFT and FSPO adapters) conditioned on a user's shots.

The shots go into the prompt in FSPO's raw-text serialization (no chat template), so the same
object serves the untrained base model (few-shot prompting), the SFT-only model and the trained
FSPO model. ``score_options`` picks the option with the highest log-likelihood as the
preferred response; ``reference_logps`` scores with the adapter switched off (the SFT model,
the reference of the implicit reward).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from personalign.fspo.data.serialization import Shot, serialize_prompt
from personalign.fspo.train.scoring import completion_logps, encode
from personalign.runtime.data.records import PreferencePair
from personalign.runtime.errors import ModelError
from personalign.runtime.llm.prompt_cache import PromptCache
from personalign.runtime.llm.types import ChoiceResult

log = logging.getLogger(__name__)

MANIFEST = "fspo_model.json"
PREFERRED_HEADER = "## Preferred Response\n"


def as_shot(item: Shot | PreferencePair | Mapping[str, Any]) -> Shot:
    """A shot from a serialization Shot, a PreferencePair, or a mapping with question (or
    prompt), chosen (or preferred) and rejected (or dispreferred)."""
    if isinstance(item, Shot):
        return item
    if isinstance(item, PreferencePair):
        return Shot(item.prompt.strip(), item.chosen.strip(), item.rejected.strip())
    question = item.get("question", item.get("prompt"))
    chosen = item.get("chosen", item.get("preferred"))
    rejected = item.get("rejected", item.get("dispreferred"))
    if question is None or chosen is None or rejected is None:
        raise ValueError("a shot needs question (or prompt), chosen and rejected")
    return Shot(str(question).strip(), str(chosen).strip(), str(rejected).strip())


def format_prompt(shots: Iterable[Shot | PreferencePair | Mapping[str, Any]], question: str,
                  description: str | None = None) -> str:
    """FSPO serialization (the data side's ``serialize_prompt``, docs/fspo.md); with a
    ``description`` the oracle variant (description first)."""
    return serialize_prompt([as_shot(s) for s in shots], question.strip(),
                            "oracle" if description else "default",
                            user_description=description)


def completion_text(response: str, eos_token: str = "") -> str:
    """A response as an FSPO completion: header, response, newline, EOS."""
    return f"{PREFERRED_HEADER}{response.strip()}\n{eos_token}"


def load_base(model: str, *, dtype=torch.float32):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from personalign.runtime.models import resolve

    path = resolve(model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except OSError as e:
        raise ModelError(f"cannot load model from {path}: {e}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return lm, tokenizer


def write_manifest(folder: Path, **fields: Any) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(fields, indent=2), encoding="utf-8")
    tmp.replace(folder / MANIFEST)


class PersonalizedModel:
    """Base model plus optional adapters; conditions on a user's shots at inference."""

    def __init__(self, model, tokenizer, *, reference=None, name: str = "model",
                 max_prompt_tokens: int = 2048, max_completion_tokens: int = 256,
                 variant: str = "default"):
        self.model = model.eval()
        self.tokenizer = tokenizer
        # A separate reference model (full fine-tuning); for LoRA the reference is the
        # model with its adapter disabled.
        self.reference = reference.eval() if reference is not None else None
        self.name = name
        self.max_prompt_tokens = max_prompt_tokens
        self.max_completion_tokens = max_completion_tokens
        # "user-description": trained to write the user's description before the response.
        self.variant = variant
        # Consecutive queries of one user share their shots: reuse that prefix's KV cache
        # (clear it if the weights change under this object).
        self.prompt_cache = PromptCache()

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def base(cls, model: str = "smollm2-135m-instruct", **kw) -> PersonalizedModel:
        lm, tokenizer = load_base(model)
        return cls(lm, tokenizer, name=kw.pop("name", "base"), **kw)

    @classmethod
    def load(cls, folder: str | Path, **kw) -> PersonalizedModel:
        """A model saved by the FSPO trainer (``final/`` or ``sft/``) or by :meth:`save`."""
        from peft import PeftModel

        folder = Path(folder)
        manifest_path = folder / MANIFEST
        if not manifest_path.exists():
            raise ModelError(f"{folder} has no {MANIFEST}: not an FSPO model folder")
        m = json.loads(manifest_path.read_text(encoding="utf-8"))
        reference = None
        if m["finetune"] == "full":
            lm, tokenizer = load_base(str(folder / m["model"]))
            if m.get("reference"):
                reference, _ = load_base(str((folder / m["reference"]).resolve()))
            elif m.get("reference_model"):
                reference, _ = load_base(m["reference_model"])
        else:
            lm, tokenizer = load_base(m["base"])
            if m.get("sft_adapter"):
                # Merged, exactly as the trainer did before stage 2: the reference is this.
                lm = PeftModel.from_pretrained(lm, folder / m["sft_adapter"]).merge_and_unload()
            if m.get("adapter"):
                lm = PeftModel.from_pretrained(lm, folder / m["adapter"])
        kw.setdefault("variant", m.get("variant", "default"))
        return cls(lm, tokenizer, reference=reference, name=kw.pop("name", folder.name), **kw)

    # ---- prompts ------------------------------------------------------------------------
    def encode(self, prompt: str, completions: Sequence[str]):
        return encode(self.tokenizer, prompt, list(completions),
                      max_prompt_tokens=self.max_prompt_tokens,
                      max_completion_tokens=self.max_completion_tokens)

    @contextlib.contextmanager
    def _reference_context(self):
        if self.reference is not None:
            yield self.reference
        elif hasattr(self.model, "disable_adapter"):
            with self.model.disable_adapter():
                yield self.model
        else:
            yield self.model

    @torch.no_grad()
    def completion_logps(self, prompt: str, completions: Sequence[str], *,
                         reference: bool = False) -> np.ndarray:
        """Summed log-probs of each completion (EOS included) after a raw-text prompt."""
        logps, _ = self.score_encoded(self.encode(prompt, completions), reference=reference)
        return logps.double().cpu().numpy()

    @torch.no_grad()
    def score_encoded(self, example, *, reference: bool = False):
        """(summed log-probs [k], lengths [k]) of an encoded example, policy or reference."""
        pad = self.tokenizer.pad_token_id
        if reference:
            with self._reference_context() as ref:
                return completion_logps(ref, example, pad, self.prompt_cache, "reference")
        return completion_logps(self.model, example, pad, self.prompt_cache, "policy")

    def option_logps(self, shots, question: str, options: Sequence[str],
                     description: str | None = None, *, reference: bool = False) -> np.ndarray:
        prompt = format_prompt(shots, question, description)
        completions = [completion_text(o, self.tokenizer.eos_token) for o in options]
        return self.completion_logps(prompt, completions, reference=reference)

    def score_options(self, shots, question: str, options: Sequence[str],
                      description: str | None = None) -> ChoiceResult:
        """The option the model would most likely write as the user's preferred response."""
        logps = self.option_logps(shots, question, options, description)
        normalized = logps - np.logaddexp.reduce(logps)
        return ChoiceResult(logprobs=normalized.tolist(), choice=int(np.argmax(logps)))

    def generate(self, shots, question: str, description: str | None = None, *,
                 max_new_tokens: int = 128, temperature: float = 0.0, seed: int = 0) -> str:
        """The preferred response for this user (greedy unless temperature > 0)."""
        return self.generate_from_prompt(format_prompt(shots, question, description),
                                         max_new_tokens=max_new_tokens,
                                         temperature=temperature, seed=seed)

    @torch.no_grad()
    def generate_from_prompt(self, prompt: str, *, max_new_tokens: int = 128,
                             temperature: float = 0.0, seed: int = 0) -> str:
        """Response to a serialized episode prompt (the completion header is added here).

        A user-description model first writes "## User Description" and then the response;
        the description is dropped from the returned text (see :meth:`describe_and_respond`).
        """
        return self.describe_and_respond(prompt, max_new_tokens=max_new_tokens,
                                         temperature=temperature, seed=seed)[1]

    @torch.no_grad()
    def describe_and_respond(self, prompt: str, *, max_new_tokens: int = 128,
                             temperature: float = 0.0, seed: int = 0) -> tuple[str | None, str]:
        """(inferred user description or None, response) for a serialized prompt."""
        describe = self.variant == "user-description"
        header = "## User Description\n" if describe else PREFERRED_HEADER
        example = self.encode(prompt + header, [])
        ids = torch.tensor([example.prompt_ids], device=self.model.device)
        kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens * (2 if describe else 1),
                                  "eos_token_id": self.tokenizer.eos_token_id,
                                  "pad_token_id": self.tokenizer.pad_token_id}
        if temperature > 0:
            torch.manual_seed(seed)
            kwargs.update(do_sample=True, temperature=temperature, top_p=1.0)
        else:
            kwargs.update(do_sample=False)
        out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
        text = self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        description = None
        if describe:
            description, _, text = text.partition(PREFERRED_HEADER)
            description = description.strip()
        # The response ends at the next section header if the model runs on.
        return description, text.split("\n#")[0].strip()

    # ---- persistence --------------------------------------------------------------------
    def save(self, folder: str | Path, *, base: str | None = None) -> None:
        """Save the adapter (LoRA) or the full model; :meth:`load` restores identical scores.

        A model whose SFT adapter was merged cannot be split again, so LoRA models are
        saved by the trainer, which keeps both adapters; here LoRA models need ``base`` to
        be the (already merged) base they were created on, and save only their adapter.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if hasattr(self.model, "peft_config"):
            if base is None:
                raise ModelError("saving a LoRA model needs the base model name or folder")
            self.model.save_pretrained(folder / "adapter")
            write_manifest(folder, finetune="lora", base=base, sft_adapter=None,
                           adapter="adapter")
        else:
            self.model.save_pretrained(folder / "model")
            self.tokenizer.save_pretrained(folder / "model")
            write_manifest(folder, finetune="full", model="model", reference=None)
