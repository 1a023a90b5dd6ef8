"""FSPO training (stage 1 SFT, stage 2 summed IPO / DPO) and the model folders it writes."""

from personalign.fspo.train.config import FSPOTrainConfig, LoraSettings
from personalign.fspo.train.losses import preference_loss, reward_metrics

__all__ = ["FSPOTrainConfig", "FSPOTrainer", "LoraSettings", "preference_loss",
           "reward_metrics"]


def __getattr__(name):  # the trainer pulls in tqdm/peft: import it on first use
    if name == "FSPOTrainer":
        from personalign.fspo.train.trainer import FSPOTrainer

        return FSPOTrainer
    raise AttributeError(name)
