"""The training-job record: everything one training run needs, built the same way by a fresh run
(nfx.workflows.finetune), a resumed one and each fold of a --folds run, and consumed by
train_run → fit, which read their settings from the config sections rather than from loose
keyword arguments."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nfx.config import RunConfig
from nfx.records import ModelInfo


@dataclass(frozen=True)
class Selection:
    """The images of one split: their decode-cache entries and class indices."""

    entries: list[Path]
    labels: list[int]


@dataclass
class TrainingJob:
    cfg: RunConfig  # resolved: schedule, input size, architecture's real name
    model: Any  # the timm model, weights loaded (or random init)
    preprocessing: Any  # nfx.models.factory.Preprocessing: the checkpoint's mean/std
    info: ModelInfo  # what model.json records
    train: Selection
    valid: Selection
    device: Any  # torch.device
    precision: str  # resolved: bf16 | fp16 | fp32
    run_dir: Path
    counts: dict[str, Any]  # images and patients per split (metrics.json)
    notes: list[str] = field(default_factory=list)  # what the user was told while preparing
    resume: dict[str, Any] | None = None  # the last checkpoint, when continuing
    t_start: float = field(default_factory=time.time)

    @property
    def num_classes(self) -> int:
        return self.info.num_classes
