"""Training: the :class:`Trainer` loop, its configuration, EMA, checkpoints and distributed set-up.

Quick start (single process; ``torchrun --nproc_per_node=N`` runs the same code on N processes)::

    from pixelgen.train import TrainConfig, train
    cfg = TrainConfig()                       # PixelGen-XL/16 on ImageNet 256, the paper's settings
    cfg.data.root = "/path/to/imagenet/train"
    train(cfg, resume="auto")

Recipes (``recipes/imagenet256.py``) build the config from a preset plus ``--set key=value`` overrides.
"""

from ..distributed import DistInfo, RankStoppedAnswering, setup_distributed
from .checkpointing import CheckpointManager, capture_rng_state, load_training_checkpoint, restore_rng_state
from .config import (
    DataConfig,
    ModelConfig,
    ObjectiveConfig,
    OptimConfig,
    PostHocEMAConfig,
    SampleConfig,
    TrainConfig,
    apply_overrides,
    parse_override_value,
)
from .ema import EMA
from .metrics import MetricsLogger, RunLog, plot_loss_curve, read_metrics
from .parallel import TrainModules
from .posthoc_ema import PostHocEMA
from .run_folder import RunFolderError, RunLock
from .seeding import sample_seeds
from .trainer import StepRecord, Trainer, TrainingDiverged, TrainResult, autocast_dtype_for, train

__all__ = [
    "CheckpointManager",
    "DataConfig",
    "DistInfo",
    "EMA",
    "MetricsLogger",
    "ModelConfig",
    "ObjectiveConfig",
    "RankStoppedAnswering",
    "RunFolderError",
    "RunLock",
    "RunLog",
    "StepRecord",
    "OptimConfig",
    "PostHocEMA",
    "PostHocEMAConfig",
    "SampleConfig",
    "TrainConfig",
    "TrainModules",
    "TrainResult",
    "Trainer",
    "TrainingDiverged",
    "apply_overrides",
    "autocast_dtype_for",
    "capture_rng_state",
    "load_training_checkpoint",
    "parse_override_value",
    "plot_loss_curve",
    "read_metrics",
    "restore_rng_state",
    "sample_seeds",
    "setup_distributed",
    "train",
]
