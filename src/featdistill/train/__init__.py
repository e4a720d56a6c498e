"""featdistill.train: the loop (Trainer), its config, atomic checkpoints with exact resume, and DDP.

See ``docs/architecture.md`` for the contract the Trainer relies on (the Distiller and the loaders).
"""

from featdistill.train.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from featdistill.train.config import TrainConfig, TrainConfigError, format_config_error
from featdistill.train.distributed import DistContext, cleanup_distributed, init_distributed
from featdistill.train.schedule import build_scheduler, lr_at
from featdistill.train.trainer import Trainer, TrainerCallback, TrainResult, build_optimizer, evaluate

__all__ = [
    "Trainer",
    "TrainResult",
    "TrainerCallback",
    "TrainConfig",
    "TrainConfigError",
    "format_config_error",
    "CheckpointError",
    "latest_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
    "DistContext",
    "init_distributed",
    "cleanup_distributed",
    "build_scheduler",
    "lr_at",
    "build_optimizer",
    "evaluate",
]
