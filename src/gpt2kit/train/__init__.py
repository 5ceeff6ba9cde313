"""Training and fine-tuning: one loop (`train`), its config, optimizer, checkpoints and metrics."""

from typing import TYPE_CHECKING

from gpt2kit.lazy import exports

_WHERE = {"TrainConfig": "gpt2kit.train.config", "TrainResult": "gpt2kit.train.loop", "train": "gpt2kit.train.loop"}
__getattr__, __dir__ = exports(__name__, _WHERE)  # imported on first use: config.py alone loads without torch

if TYPE_CHECKING:
    from gpt2kit.train.config import TrainConfig
    from gpt2kit.train.loop import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]
