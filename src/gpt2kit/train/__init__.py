"""Training and fine-tuning: one loop (`train`), its config, optimizer, checkpoints and metrics."""

from gpt2kit.train.config import TrainConfig
from gpt2kit.train.loop import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]
