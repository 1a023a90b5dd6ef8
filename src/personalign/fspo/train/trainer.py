"""FSPO training: stage 1 SFT on chosen and rejected completions (``sft_targets``: chosen only
is the few-shot Pref-FT baseline), stage 2 summed IPO (or DPO).

Why a compact torch loop and not TRL's DPOTrainer/SFTTrainer:
- FSPO's loss is IPO on log-probs SUMMED over response tokens. TRL 1.16's ``loss_type="ipo"``
  divides each log-ratio by its completion length, and the per-sequence loss is computed inside
  a single long ``_compute_loss`` (log-probs, reference, f-divergences, metrics) with no hook
  for the loss alone; overriding it would mean re-implementing that whole method against TRL's
  private fused-head forward, which breaks on TRL upgrades.
- On CPU the dominant cost is the long few-shot prompt. Every episode scores two completions
  (chosen, rejected) of the same prompt, in both stages; this loop runs the prompt once and
  continues both completions from its key/value cache (``scoring.py``), about half the work of
  TRL's concatenated [prompt+chosen; prompt+rejected] batches.
- Both stages then share one checkpoint/resume/metrics path, and the reference of stage 2 is
  exactly the SFT result: the SFT LoRA is merged into the base weights and stage 2 trains a
  fresh LoRA on top, so disabling the adapter gives the reference with no second model in memory.
PEFT provides LoRA, TRL the log-softmax gather (``selective_log_softmax``).

Layout of ``output_dir``: ``run.json`` (fingerprint of the inputs: training records, model,
config minus run control; a rerun with other inputs stops, ``resume=False`` starts over),
``config.json``, ``metrics.jsonl`` (one JSON object per logged step:
stage, step, split, loss, reward_accuracy, reward_margin, ...), ``checkpoints/<stage>-<step>/``
(adapter or model + ``trainer_state.pt``), ``sft/`` (the stage 1 result), ``best/`` (with
``validation_users``: the stage 2 step with the best validation choice accuracy, and
``best.json``) and ``final/`` (the model methods load: ``best/``'s weights when there is one,
else the last step's).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import random
import resource
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from personalign.fspo.data.episodes import query_options
from personalign.fspo.data.opinionqa_prefs import records_rejected_rule
from personalign.fspo.data.serialization import response_header
from personalign.fspo.train.config import FSPOTrainConfig
from personalign.fspo.train.data import load_episodes
from personalign.fspo.train.losses import completion_nll, preference_loss, reward_metrics
from personalign.fspo.train.model import load_base, write_manifest
from personalign.fspo.train.scoring import EncodedExample, completion_token_logps, encode
from personalign.runtime.data.splits import derive_seed
from personalign.runtime.errors import ConfigError, DataError
from personalign.runtime.models import peft_wrapping
from personalign.runtime.runs import RunFolder, digest, model_identity
from personalign.runtime.settings import configure_threads
from personalign.runtime.storage import atomic_folder, atomic_write_json

log = logging.getLogger(__name__)

COMPLETE = "COMPLETE"


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class FSPOTrainer:
    """Configure with :class:`FSPOTrainConfig`, then :meth:`fit`; resumes where it stopped."""

    def __init__(self, config: FSPOTrainConfig, *, train_records: list[dict] | None = None,
                 eval_records: list[dict] | None = None, progress: bool = True):
        self.config = config
        self.out = Path(config.output_dir)
        self.progress = progress
        self.train_records = (train_records if train_records is not None
                              else load_episodes(config.train_files))
        self.eval_records = (eval_records if eval_records is not None
                             else load_episodes(config.eval_files))
        if not self.train_records:
            raise DataError("no training episodes (set train_files)")
        self._check_users()
        self.validation_records = self._hold_out_validation()
        self.model = None
        self.tokenizer = None
        self.reference = None  # full fine-tuning only
        self._encoded: dict[tuple[str, int], EncodedExample] = {}
        self._eval_ref: dict[int, tuple[float, float]] = {}
        self._sft_in_memory = False

    def _check_users(self) -> None:
        held_out = set(self.config.eval_users or ()) | {r["user_id"] for r in self.eval_records}
        overlap = held_out & {r["user_id"] for r in self.train_records}
        if overlap:
            raise DataError(f"{len(overlap)} held-out users also appear in the training "
                            f"episodes (e.g. {sorted(overlap)[:3]}); train and test users "
                            "must not overlap")

    def _hold_out_validation(self) -> list[dict]:
        """Take ``validation_users`` seeded training users out of training; up to
        ``validation_max_questions`` of their multiple-choice episodes, in seeded order."""
        cfg = self.config
        if not cfg.validation_users:
            return []
        users = sorted({r["user_id"] for r in self.train_records})
        if cfg.validation_users >= len(users):
            raise ConfigError(f"validation_users={cfg.validation_users} leaves no training "
                              f"user (the episodes have {len(users)})")
        rng = random.Random(derive_seed(cfg.seed, "fspo validation"))
        held = set(rng.sample(users, cfg.validation_users))
        episodes = [r for r in self.train_records if r["user_id"] in held and query_options(r)
                    and (r.get("meta") or {}).get("variant") != "user-description"]
        if not episodes:
            raise DataError("validation_users: the held-out users have no multiple-choice "
                            "episodes (their meta has no query options)")
        self.train_records = [r for r in self.train_records if r["user_id"] not in held]
        rng.shuffle(episodes)
        return episodes[: cfg.validation_max_questions or None]

    # ---- public -------------------------------------------------------------------------
    def fit(self) -> Path:
        """Run (or resume) both stages; returns the ``final/`` model folder."""
        cfg = self.config
        final = self.out / "final"
        RunFolder.open(self.out, kind="fspo train", inputs=self.inputs(), force=not cfg.resume)
        if not cfg.resume:
            for folder in ("checkpoints", "sft", "best", "final"):
                shutil.rmtree(self.out / folder, ignore_errors=True)
            (self.out / "metrics.jsonl").unlink(missing_ok=True)
        if (final / COMPLETE).exists() and not self._budget_raised():
            log.info("%s is complete; nothing to do", final)
            return final
        configure_threads(cfg.threads)
        cfg.save(self.out / "config.json")
        self.model, self.tokenizer = load_base(cfg.model)

        sft_dir = self.out / "sft"
        if cfg.sft_steps > 0 and not (sft_dir / COMPLETE).exists():
            self._run_stage("sft", cfg.sft_steps, cfg.sft_lr, cfg.sft_max_minutes)
            self._save_stage_result(sft_dir, "sft")
        self._prepare_preference_stage(sft_dir if cfg.sft_steps > 0 else None)
        self._run_stage("pref", cfg.steps, cfg.lr, cfg.max_minutes)
        self._save_stage_result(final, "pref")
        return final

    def inputs(self) -> dict[str, Any]:
        """What the trained model depends on, one entry per config field so that a refused
        rerun names the field that changed."""
        return {"train_records": digest(self.train_records),
                "model": model_identity(self.config.model),
                **{f"config.{k}": v for k, v in self.config.result_fields().items()}}

    # ---- model setup --------------------------------------------------------------------
    def _lora_config(self):
        from peft import LoraConfig

        lc = self.config.lora
        return LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
                          target_modules=lc.target_modules, task_type="CAUSAL_LM")

    def _attach_trainable(self, checkpoint: Path | None) -> None:
        """Make ``self.model`` trainable: a (fresh or resumed) LoRA, or all weights."""
        from peft import PeftModel, get_peft_model

        torch.manual_seed(self.config.seed)
        if self.config.finetune == "lora":
            with peft_wrapping():
                if checkpoint is not None:
                    self.model = PeftModel.from_pretrained(self.model, checkpoint / "adapter",
                                                           is_trainable=True)
                else:
                    self.model = get_peft_model(self.model, self._lora_config())
        elif checkpoint is not None:
            self.model, _ = load_base(str(checkpoint / "model"))

    def _prepare_preference_stage(self, sft_dir: Path | None) -> None:
        """Turn the SFT result into the frozen reference and the starting policy."""
        from peft import PeftModel

        cfg = self.config
        if cfg.finetune == "lora":
            if hasattr(self.model, "peft_config"):  # SFT just ran in this process
                self.model = self.model.merge_and_unload()
            elif sft_dir is not None:
                with peft_wrapping():
                    self.model = PeftModel.from_pretrained(
                        self.model, sft_dir / "adapter").merge_and_unload()
            # The reference is this merged model: stage 2's adapter disabled.
        else:
            if sft_dir is not None and not self._sft_in_memory:
                self.model, _ = load_base(str(sft_dir / "model"))
            self.reference = copy.deepcopy(self.model).eval()
            for p in self.reference.parameters():
                p.requires_grad_(False)

    @contextlib.contextmanager
    def _reference(self):
        if self.reference is not None:
            yield self.reference
        else:
            with self.model.disable_adapter():
                yield self.model

    # ---- data ---------------------------------------------------------------------------
    def _encoded_example(self, split: str, index: int) -> EncodedExample:
        key = (split, index)
        if key not in self._encoded:
            if split == "validation":  # every option, written as the completions are
                row = self.validation_records[index]
                header = response_header((row.get("meta") or {}).get("variant", "default"))
                completions = [f"{header}\n{o.strip()}\n" for o in query_options(row)[0]]
            else:
                row = (self.train_records if split == "train" else self.eval_records)[index]
                completions = [row["chosen"], row["rejected"]]
            self._encoded[key] = encode(self.tokenizer, row["prompt"], completions,
                                        max_prompt_tokens=self.config.max_prompt_tokens,
                                        max_completion_tokens=self.config.max_completion_tokens)
        return self._encoded[key]

    def _train_index(self, stage: str, position: int) -> int:
        """Deterministic shuffled order, one fresh permutation per epoch (resumable)."""
        n = len(self.train_records)
        epoch, offset = divmod(position, n)
        order = list(range(n))
        random.Random(f"{self.config.seed}:{stage}:{epoch}").shuffle(order)
        return order[offset]

    def _eval_indices(self) -> list[int]:
        order = list(range(len(self.eval_records)))
        random.Random(f"{self.config.seed}:eval").shuffle(order)
        return order[: self.config.eval_max_pairs]

    # ---- one example --------------------------------------------------------------------
    def _sft_loss(self, example: EncodedExample) -> tuple[torch.Tensor, dict]:
        # Pref-FT trains on the first completion (the chosen) only
        completions = example.completion_ids[:1] if self.config.sft_targets == "chosen" \
            else example.completion_ids
        token_logps, mask = completion_token_logps(self.model, example.prompt_ids, completions,
                                                   self.tokenizer.pad_token_id)
        return completion_nll(token_logps, mask, self.config.sft_reduction), {}

    def _pref_loss(self, example: EncodedExample) -> tuple[torch.Tensor, dict]:
        pad = self.tokenizer.pad_token_id
        with torch.no_grad(), self._reference() as ref:
            ref_tok, _ = completion_token_logps(ref, example.prompt_ids, example.completion_ids,
                                                pad)
        pol_tok, mask = completion_token_logps(self.model, example.prompt_ids,
                                               example.completion_ids, pad)
        pol, ref_s, lengths = pol_tok.sum(1), ref_tok.sum(1), mask.sum(1)
        out = preference_loss(pol[:1], pol[1:], ref_s[:1], ref_s[1:], beta=self.config.beta,
                              loss_type=self.config.loss, chosen_lengths=lengths[:1],
                              rejected_lengths=lengths[1:])
        return out.loss, {"chosen_rewards": out.chosen_rewards,
                          "rejected_rewards": out.rejected_rewards}

    # ---- evaluation ---------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Implicit reward accuracy/margin and loss on held-out users' pairs."""
        if not self.eval_records or self.config.eval_max_pairs == 0:
            return {}
        was_training = self.model.training
        self.model.eval()
        pad = self.tokenizer.pad_token_id
        chosen, rejected, losses, ll_correct = [], [], [], []
        for i in self._eval_indices():
            example = self._encoded_example("eval", i)
            if i not in self._eval_ref:  # the reference is frozen during stage 2
                with self._reference() as ref:
                    r = completion_token_logps(ref, example.prompt_ids, example.completion_ids,
                                               pad)[0].sum(1)
                self._eval_ref[i] = (r[0].item(), r[1].item())
            tok, mask = completion_token_logps(self.model, example.prompt_ids,
                                               example.completion_ids, pad)
            pol = tok.sum(1)
            ref = torch.tensor(self._eval_ref[i], dtype=pol.dtype)
            lengths = mask.sum(1)
            out = preference_loss(pol[:1], pol[1:], ref[:1], ref[1:], beta=self.config.beta,
                                  loss_type=self.config.loss, chosen_lengths=lengths[:1],
                                  rejected_lengths=lengths[1:])
            chosen.append(out.chosen_rewards)
            rejected.append(out.rejected_rewards)
            losses.append(out.loss.item())
            ll_correct.append(float(pol[0] > pol[1]))
        if was_training:
            self.model.train()
        metrics = reward_metrics(torch.cat(chosen), torch.cat(rejected))
        metrics.update(loss=float(np.mean(losses)), logp_accuracy=float(np.mean(ll_correct)),
                       pairs=len(losses))
        return metrics

    @torch.no_grad()
    def validation_accuracy(self) -> float | None:
        """Share of the held-out users' questions whose answer gets the highest summed
        log-prob among all options (None without ``validation_users``)."""
        if not self.validation_records:
            return None
        was_training = self.model.training
        self.model.eval()
        correct = 0
        for i, row in enumerate(self.validation_records):
            example = self._encoded_example("validation", i)
            tok, _ = completion_token_logps(self.model, example.prompt_ids,
                                            example.completion_ids, self.tokenizer.pad_token_id)
            correct += int(tok.sum(1).argmax()) == query_options(row)[1]
        if was_training:
            self.model.train()
        return correct / len(self.validation_records)

    def _evaluation(self, step: int) -> dict[str, float]:
        """Stage 2's eval metrics at ``step``; a new best validation accuracy (ties keep the
        earlier step) saves this step's weights to ``best/``."""
        metrics = self.evaluate()
        accuracy = self.validation_accuracy()
        if accuracy is not None:
            metrics["validation_accuracy"] = accuracy
            best = self._best()
            if best is None or accuracy > best["validation_accuracy"]:
                with atomic_folder(self.out / "best") as tmp:
                    self._save_weights(tmp)
                    atomic_write_json(tmp / "best.json",
                                      {"step": step, "validation_accuracy": accuracy})
        return metrics

    def _best(self) -> dict[str, Any] | None:
        path = self.out / "best" / "best.json"
        return json.loads(path.read_text()) if path.exists() else None

    # ---- stages -------------------------------------------------------------------------
    def _budget_raised(self) -> bool:
        """True when the finished run stopped on its time budget before its last step and
        this config allows more time: the rerun continues from the last checkpoint."""
        cfg, metrics = self.config, self.out / "metrics.jsonl"
        if not cfg.resume or cfg.max_minutes is None or not metrics.exists():
            return False
        summaries = [r for r in map(json.loads, metrics.read_text().splitlines())
                     if r.get("stage") == "pref" and r.get("split") == "summary"]
        if not summaries or not summaries[-1].get("stopped_by_budget"):
            return False
        last = summaries[-1]
        used = last["cpu_s"] if cfg.budget_clock == "cpu" else last["elapsed_s"]
        return last["step"] < cfg.steps and cfg.max_minutes * 60 > used

    def _stage_checkpoint(self, stage: str) -> Path | None:
        folder = self.out / "checkpoints"
        found = sorted(p for p in folder.glob(f"{stage}-*") if (p / COMPLETE).exists()) \
            if folder.exists() else []
        return found[-1] if found else None

    def _make_optimizer(self, lr: float):
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.config.optimizer == "rmsprop":
            opt = torch.optim.RMSprop(params, lr=lr, weight_decay=self.config.weight_decay)
        else:
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=self.config.weight_decay)
        warmup = self.config.warmup_steps
        # Linear warmup, then constant (as in the FSPO/DPO reference code).
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: min(1.0, (step + 1) / (warmup + 1)) if warmup else 1.0)
        return opt, sched

    def _log(self, record: dict) -> None:
        record = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in record.items()}
        with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def _save_checkpoint(self, stage: str, step: int, opt, sched, elapsed: float,
                         cpu: float = 0.0) -> None:
        target = self.out / "checkpoints" / f"{stage}-{step:06d}"
        with atomic_folder(target) as tmp:
            self._save_weights(tmp)
            torch.save({"step": step, "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(), "elapsed_s": elapsed, "cpu_s": cpu,
                        "torch_rng": torch.get_rng_state()}, tmp / "trainer_state.pt")
            (tmp / COMPLETE).write_text("")
        done = sorted(p for p in target.parent.glob(f"{stage}-*") if p.suffix != ".tmp")
        for old in done[: -self.config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)

    def _save_weights(self, folder: Path) -> None:
        if self.config.finetune == "lora":
            self.model.save_pretrained(folder / "adapter")
        else:
            self.model.save_pretrained(folder / "model")
            self.tokenizer.save_pretrained(folder / "model")

    def _run_stage(self, stage: str, steps: int, lr: float, max_minutes: float | None) -> None:
        cfg = self.config
        checkpoint = self._stage_checkpoint(stage) if cfg.resume else None
        self._attach_trainable(checkpoint)
        if stage == "pref" and cfg.finetune == "full" and self.reference is None:
            raise ConfigError("internal: full fine-tuning needs a reference model")
        opt, sched = self._make_optimizer(lr)
        start_step, elapsed_before, cpu_before = 0, 0.0, 0.0
        if checkpoint is not None:
            state = torch.load(checkpoint / "trainer_state.pt", weights_only=False)
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["torch_rng"])
            start_step, elapsed_before = state["step"], state["elapsed_s"]
            cpu_before = state.get("cpu_s", 0.0)
            log.info("resuming %s from %s (step %d)", stage, checkpoint, start_step)
        loss_fn = self._sft_loss if stage == "sft" else self._pref_loss
        if stage == "pref" and start_step == 0:
            self._log({"stage": stage, "step": 0, "split": "eval", **self._evaluation(0),
                       "elapsed_s": 0.0, "peak_rss_mb": peak_rss_mb()})
        self.model.train()
        began, cpu_began = time.time(), time.process_time()

        def cpu_used() -> float:
            return cpu_before + time.process_time() - cpu_began
        step = start_step
        bar = tqdm(total=steps, initial=start_step, desc=f"fspo {stage}",
                   disable=not self.progress, dynamic_ncols=True)
        stopped_by_budget = False
        while step < steps:
            elapsed = elapsed_before + time.time() - began
            used = cpu_used() if cfg.budget_clock == "cpu" else elapsed
            if max_minutes is not None and used > max_minutes * 60:
                stopped_by_budget = True
                log.info("%s: %s budget of %.1f min spent at step %d", stage, cfg.budget_clock,
                         max_minutes, step)
                break
            losses, chosen, rejected = [], [], []
            for micro in range(cfg.grad_accum):
                index = self._train_index(stage, step * cfg.grad_accum + micro)
                loss, extra = loss_fn(self._encoded_example("train", index))
                (loss / cfg.grad_accum).backward()
                losses.append(loss.item())
                if extra:
                    chosen.append(extra["chosen_rewards"])
                    rejected.append(extra["rejected_rewards"])
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(
                    [p for p in self.model.parameters() if p.requires_grad], cfg.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            record = {"stage": stage, "step": step, "split": "train",
                      "loss": float(np.mean(losses)), "lr": sched.get_last_lr()[0],
                      "elapsed_s": elapsed_before + time.time() - began, "cpu_s": cpu_used()}
            if chosen:
                record.update(reward_metrics(torch.cat(chosen), torch.cat(rejected)))
            bar.set_postfix(loss=f"{record['loss']:.3g}")
            self._log(record)
            if stage == "pref" and cfg.eval_every and step % cfg.eval_every == 0 and step < steps:
                self._log({"stage": stage, "step": step, "split": "eval", **self._evaluation(step),
                           "elapsed_s": elapsed_before + time.time() - began,
                           "peak_rss_mb": peak_rss_mb()})
            if cfg.save_every and step % cfg.save_every == 0 and step < steps:
                self._save_checkpoint(stage, step, opt, sched,
                                      elapsed_before + time.time() - began, cpu_used())
        bar.close()
        total = elapsed_before + time.time() - began
        # A finished stage's result is saved next (sft/ or final/); full-model checkpoints
        # are large, so they are written at the end only when the stage stopped early.
        if cfg.finetune == "lora" or step < steps:
            self._save_checkpoint(stage, step, opt, sched, total, cpu_used())
        self.model.eval()
        summary = {"stage": stage, "step": step, "split": "summary", "elapsed_s": total,
                   "cpu_s": cpu_used(),
                   "stopped_by_budget": stopped_by_budget, "peak_rss_mb": peak_rss_mb()}
        if stage == "pref":
            summary.update({f"eval_{k}": v for k, v in self._evaluation(step).items()})
            best = self._best()
            if best is not None:
                summary["final_step"] = best["step"]
        self._log(summary)

    def _save_stage_result(self, folder: Path, stage: str) -> None:
        """``sft/`` or ``final/``: a model folder (``fspo.train.model``) any method loads."""
        cfg = self.config
        best = self.out / "best" if stage == "pref" and self._best() is not None else None
        with atomic_folder(folder) as tmp:
            if cfg.finetune == "lora":
                if best is not None:
                    shutil.copytree(best / "adapter", tmp / "adapter")
                else:
                    self.model.save_pretrained(tmp / "adapter")
                sft_adapter = None
                if stage == "pref" and cfg.sft_steps > 0:
                    shutil.copytree(self.out / "sft" / "adapter", tmp / "sft_adapter")
                    sft_adapter = "sft_adapter"
                write_manifest(tmp, finetune="lora", base=cfg.model, sft_adapter=sft_adapter,
                               adapter="adapter", stage=stage, **self._data_fields())
            else:
                if best is not None:
                    shutil.copytree(best / "model", tmp / "model")
                else:
                    self._save_weights(tmp)
                fields: dict[str, Any] = {}
                if stage == "pref":
                    # The reference is the SFT result already on disk, or the base model.
                    if cfg.sft_steps > 0:
                        fields["reference"] = "../sft/model"
                    else:
                        fields["reference_model"] = cfg.model
                write_manifest(tmp, finetune="full", model="model", base=cfg.model, stage=stage,
                               **self._data_fields(), **fields)
                if stage == "sft":
                    self._sft_in_memory = True
            (tmp / COMPLETE).write_text("")

    def _data_fields(self) -> dict[str, Any]:
        """What inference must repeat of the training data: the episodes' serialization
        variant and, for OpinionQA data, the rejected-option rule of its pairs (None where
        the data does not tell); and what stage 1 trained on."""
        from collections import Counter

        counts = Counter((r.get("meta") or {}).get("variant", "default")
                         for r in self.train_records)
        return {"variant": counts.most_common(1)[0][0],
                "rejected_rule": records_rejected_rule(self.train_records),
                "sft_targets": self.config.sft_targets if self.config.sft_steps else None}
