"""Training configuration for FSPO (stage 1 SFT, stage 2 IPO/DPO), loadable from YAML or JSON.

Defaults follow the FSPO recipe (beta = 0.01, summed-IPO loss, RMSprop, reference = the SFT
result) scaled to CPU: LoRA instead of full fine-tuning and a learning rate suited to LoRA
(the paper's 1e-6 is for full fine-tuning of a 3B model).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from personalign.runtime.config import Config
from personalign.runtime.errors import ConfigError
from personalign.runtime.storage import atomic_write_json

# Fields that steer a run but not what it computes: a rerun that changes only these resumes
# (a raised time budget or step count continues from the last checkpoint).
RUN_CONTROL_FIELDS = ("output_dir", "resume", "threads", "max_minutes", "sft_max_minutes",
                      "steps", "eval_every", "save_every", "keep_checkpoints")


@dataclass
class LoraSettings(Config):
    r: int = field(default=16, metadata={"help": "LoRA rank."})
    alpha: int = field(default=32, metadata={"help": "LoRA scaling alpha."})
    dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    target_modules: str | list[str] = field(default="all-linear", metadata={
        "help": "Modules LoRA adapts; all-linear lets PEFT pick every linear layer except the "
                "output head."})


@dataclass
class FSPOTrainConfig(Config):
    """Everything one FSPO training run needs. Unknown keys in a config file are an error."""

    model: str = field(default="smollm2-135m-instruct", metadata={
        "help": "The policy model to train (an embedded model's name or a local folder)."})
    train_files: list[str] = field(default_factory=list, metadata={
        "help": "Training episodes (JSONL/parquet)."})
    eval_files: list[str] = field(default_factory=list, metadata={
        "help": "Episodes of users held out of training (implicit reward accuracy is logged "
                "on them)."})
    eval_users: list[str] | None = field(default=None, metadata={
        "help": "Optional explicit list of held-out user ids; training refuses records of "
                "these users."})
    output_dir: str = field(default="runs/fspo", metadata={
        "help": "Where checkpoints, metrics and final/ go."})

    finetune: Literal["lora", "full"] = field(default="lora", metadata={
        "help": "LoRA adapters or full fine-tuning."})
    lora: LoraSettings = field(default_factory=LoraSettings, metadata={
        "help": "LoRA settings (finetune lora)."})

    # Stage 1
    sft_steps: int = field(default=20, metadata={
        "help": "Stage 1: SFT steps on the completions sft_targets names (completion-only "
                "loss). 0 skips it."})
    sft_targets: Literal["both", "chosen"] = field(default="both", metadata={
        "help": "What stage 1 trains on: both (FSPO's recipe: chosen AND rejected "
                "completions) or chosen (few-shot Pref-FT, the paper's baseline: the preferred "
                "responses only; with steps 0 the run is Pref-FT alone)."})
    sft_reduction: Literal["sum", "mean"] = field(default="sum", metadata={
        "help": "Stage 1 loss per completion: sum (the reference code's: negative "
                "log-likelihood summed over its tokens, averaged over completions; the default "
                "since issue 28) or mean (over all completion tokens; the earlier default). "
                "sum scales the gradient by about the completion length T: with plain SGD that "
                "is a T times larger learning rate; RMSprop and AdamW divide it out (the lr "
                "carries over), but long completions then weigh more and max_grad_norm clips "
                "T times sooner."})
    sft_lr: float = field(default=1e-4, metadata={"help": "Stage 1 learning rate."})
    # Stage 2
    loss: Literal["ipo_sum", "ipo", "dpo"] = field(default="ipo_sum", metadata={
        "help": "Stage 2: the preference loss, optimized against the SFT result as "
                "reference."})
    beta: float = field(default=0.01, metadata={"help": "The preference loss's beta."})
    steps: int = field(default=100, metadata={"help": "Stage 2 optimizer steps."})
    lr: float = field(default=1e-4, metadata={"help": "Stage 2 learning rate."})
    warmup_steps: int = field(default=10, metadata={"help": "Learning-rate warmup steps."})
    optimizer: Literal["rmsprop", "adamw"] = field(default="rmsprop", metadata={
        "help": "The torch optimizer."})
    weight_decay: float = field(default=0.0, metadata={"help": "Optimizer weight decay."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm."})
    grad_accum: int = field(default=4, metadata={
        "help": "Episodes per optimizer step (one episode = one prompt with a chosen/rejected "
                "pair)."})

    max_prompt_tokens: int = field(default=1024, metadata={
        "help": "Prompt length cap in tokens: a longer prompt loses whole shots, oldest "
                "first, then its start."})
    max_completion_tokens: int = field(default=128, metadata={
        "help": "Completion length cap in tokens (EOS included); longer ones are cut."})
    seed: int = field(default=0, metadata={
        "help": "Seed of torch (LoRA's init), the episode order and the validation users."})
    sft_max_minutes: float | None = field(default=None, metadata={
        "help": "Stage 1 budget in minutes (None: steps only); the stage stops cleanly and "
                "saves when it is spent."})
    max_minutes: float | None = field(default=None, metadata={
        "help": "Stage 2 budget in minutes (None: steps only); the run stops cleanly and "
                "saves when it is spent."})
    budget_clock: Literal["wall", "cpu"] = field(default="wall", metadata={
        "help": "What the minute budgets count: wall (elapsed time) or cpu (this process's CPU "
                "time: comparable on a shared machine)."})

    eval_every: int = field(default=25, metadata={
        "help": "Steps between evaluations on the held-out users."})
    eval_max_pairs: int = field(default=64, metadata={
        "help": "Held-out preference pairs per evaluation."})
    validation_users: int = field(default=0, metadata={
        "help": "Which step becomes final/ (beyond the paper: on a CPU budget the pair loss "
                "keeps falling after choice accuracy has peaked). With N > 0, N training users "
                "are held out of both stages; at every eval up to validation_max_questions of "
                "their episodes are answered (each option scored as the completion, as fspo: "
                "answers) and final/ is the stage 2 step with the best choice accuracy (step "
                "0, the SFT result, included). 0: the last step."})
    validation_max_questions: int = field(default=64, metadata={
        "help": "Validation users' questions answered per evaluation."})
    save_every: int = field(default=25, metadata={"help": "Steps between checkpoints."})
    keep_checkpoints: int = field(default=2, metadata={"help": "Checkpoints kept."})
    threads: int | None = field(default=None, metadata={
        "help": "Torch threads (None: $PERSONALIGN_THREADS, else torch's default)."})
    resume: bool = field(default=True, metadata={
        "help": "Continue from the last checkpoint in output_dir."})

    def validate(self) -> None:
        if isinstance(self.train_files, str):
            self.train_files = [self.train_files]
        if isinstance(self.eval_files, str):
            self.eval_files = [self.eval_files]
        if self.beta <= 0:
            raise ConfigError(f"beta must be positive, got {self.beta}")
        for name in ("steps", "sft_steps", "warmup_steps", "eval_every", "save_every",
                     "eval_max_pairs", "validation_users", "validation_max_questions"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.sft_targets == "chosen" and self.sft_steps == 0:
            raise ConfigError("sft_targets chosen (Pref-FT) needs sft_steps > 0")
        if self.grad_accum < 1:
            raise ConfigError(f"grad_accum must be >= 1, got {self.grad_accum}")
        if self.max_prompt_tokens < 16 or self.max_completion_tokens < 1:
            raise ConfigError("max_prompt_tokens must be >= 16 and max_completion_tokens >= 1")

    def result_fields(self) -> dict[str, Any]:
        """The fields the trained model depends on: all but the run-control ones."""
        return {k: v for k, v in self.to_dict().items() if k not in RUN_CONTROL_FIELDS}

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_dict(), indent=2)
