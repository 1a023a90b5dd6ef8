"""FSPO training (stage 1 SFT, stage 2 summed IPO / DPO) and the model folders it writes."""

from personalign.fspo.train.config import FSPOTrainConfig, LoraSettings

__all__ = ["FSPOTrainConfig", "FSPOTrainer", "LoraSettings", "preference_loss",
           "reward_metrics"]


def __getattr__(name):
    # torch, tqdm and peft load on first use: every CLI command imports the config above,
    # and torch alone costs ~2 s of start-up.
    if name == "FSPOTrainer":
        from personalign.fspo.train.trainer import FSPOTrainer

        return FSPOTrainer
    if name in ("preference_loss", "reward_metrics"):
        from personalign.fspo.train import losses

        return getattr(losses, name)
    raise AttributeError(name)
