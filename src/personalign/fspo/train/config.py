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
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    # "all-linear" lets PEFT pick every linear layer except the output head.
    target_modules: str | list[str] = "all-linear"


@dataclass
class FSPOTrainConfig(Config):
    """Everything one FSPO training run needs. Unknown keys in a config file are an error."""

    model: str = "smollm2-135m-instruct"
    train_files: list[str] = field(default_factory=list)
    # Episodes of users held out of training (implicit reward accuracy is logged on them).
    eval_files: list[str] = field(default_factory=list)
    # Optional explicit list of held-out user ids; training refuses records of these users.
    eval_users: list[str] | None = None
    output_dir: str = "runs/fspo"

    finetune: Literal["lora", "full"] = "lora"
    lora: LoraSettings = field(default_factory=LoraSettings)

    # Stage 1: SFT on chosen AND rejected completions (completion-only loss). 0 skips it.
    sft_steps: int = 20
    sft_lr: float = 1e-4
    # Stage 2: preference optimization against the SFT result as reference.
    loss: Literal["ipo_sum", "ipo", "dpo"] = "ipo_sum"
    beta: float = 0.01
    steps: int = 100
    lr: float = 1e-4
    warmup_steps: int = 10
    optimizer: Literal["rmsprop", "adamw"] = "rmsprop"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    # Episodes per optimizer step (one episode = one prompt with a chosen/rejected pair).
    grad_accum: int = 4

    max_prompt_tokens: int = 1024
    max_completion_tokens: int = 128
    seed: int = 0
    # Wall-clock budget per stage in minutes (None: steps only). The run stops cleanly and
    # saves when the budget is spent.
    sft_max_minutes: float | None = None
    max_minutes: float | None = None
    # "wall" (elapsed time) or "cpu" (this process's CPU time: comparable on a shared machine).
    budget_clock: Literal["wall", "cpu"] = "wall"

    eval_every: int = 25
    eval_max_pairs: int = 64
    # Which step becomes final/ (beyond the paper: on a CPU budget the pair loss keeps falling
    # after choice accuracy has peaked). With N > 0, N training users are held out of both
    # stages; at every eval up to validation_max_questions of their episodes are answered
    # (each option scored as the completion, as `fspo:` answers) and final/ is the stage 2
    # step with the best choice accuracy (step 0, the SFT result, included). 0: the last step.
    validation_users: int = 0
    validation_max_questions: int = 64
    save_every: int = 25
    keep_checkpoints: int = 2
    threads: int | None = None
    resume: bool = True

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
        if self.grad_accum < 1:
            raise ConfigError(f"grad_accum must be >= 1, got {self.grad_accum}")
        if self.max_prompt_tokens < 16 or self.max_completion_tokens < 1:
            raise ConfigError("max_prompt_tokens must be >= 16 and max_completion_tokens >= 1")

    def result_fields(self) -> dict[str, Any]:
        """The fields the trained model depends on: all but the run-control ones."""
        return {k: v for k, v in self.to_dict().items() if k not in RUN_CONTROL_FIELDS}

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_dict(), indent=2)
