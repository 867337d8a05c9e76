"""Experiment tracking for the embedded runner: a job's curves and a few pairs as TensorBoard events.

With `report_to="tensorboard"` the run folder gets `tensorboard/` holding, per epoch as it is
published:
- `train/<name>`: every optimizer step's loss, margin, grad_norm, num_pairs and `extra` values
  (reward_accuracy, ...), at the trainer's global step (read from the stored step metrics);
- `epoch/<name>`: the epoch's numeric metrics (heldout_score, heldout_score_base,
  mean_sample_score, target_win_rate, ...), at the epoch;
- `pairs/<prompt_index>_<index>`: the first few pairs of the epoch as one image, reference | base |
  target side by side.

The `tensorboard` package is an optional extra (`pip install 'dfusion[tracking]'`), imported
only when a job asks for it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dfusion_core.errors import BlobNotFound, ConfigError
from services.records import PairRecord
from workers import keys

log = logging.getLogger(__name__)

PAIR_IMAGES = 4  # pairs logged as images per epoch
_NOT_SCALARS = {"epoch", "policy_version"}


class TensorBoardTracker:
    """Writes one job's curves to `<out>/tensorboard/`; `log_epoch` once per published epoch."""

    def __init__(self, out: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("report_to", "'tensorboard' needs the tensorboard package: "
                              "pip install 'dfusion[tracking]'") from None
        self.logdir = out / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(self.logdir))

    def log_epoch(self, metrics: dict[str, Any], steps: Sequence[dict[str, Any]], pairs: Sequence[PairRecord],
                  image_path: Callable[[str], Path]) -> None:
        """metrics: the epoch's published metrics; steps: its optimizer steps (`asdict(StepMetrics)`);
        pairs: its pairs; image_path: an image's object key -> its file."""
        epoch = int(metrics["epoch"])
        for s in steps:
            values = {k: s[k] for k in ("loss", "margin", "grad_norm", "num_pairs")} | (s.get("extra") or {})
            for name, value in values.items():
                self.writer.add_scalar(f"train/{name}", float(value), int(s["step"]))
        for name, value in metrics.items():
            if name not in _NOT_SCALARS and isinstance(value, int | float) and not isinstance(value, bool):
                self.writer.add_scalar(f"epoch/{name}", float(value), epoch)
        for p in list(pairs)[:PAIR_IMAGES]:
            self.writer.add_image(f"pairs/{p.prompt_index}_{p.index}", _triplet(p, image_path), epoch,
                                  dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def make_tracker(report_to: str, out: Path) -> TensorBoardTracker | None:
    """The tracker a job's `report_to` names, or None for 'none'."""
    if report_to == "none":
        return None
    if report_to == "tensorboard":
        return TensorBoardTracker(out)
    raise ConfigError("report_to", f"{report_to!r} is not supported yet; use 'tensorboard' or 'none'")


def step_metrics(read: Callable[[str], bytes], job_id: str, epoch: int) -> list[dict[str, Any]]:
    """The optimizer steps' metrics the train stage stored for `epoch` ([] if none)."""
    try:
        return json.loads(read(f"{keys.trainer_state_prefix(job_id, epoch)}/metrics.json"))
    except BlobNotFound:
        return []


def _triplet(p: PairRecord, image_path: Callable[[str], Path]) -> Any:
    """reference | base | target as one uint8 [H, 3W, 3] array."""
    import numpy as np
    from PIL import Image

    images = [np.asarray(Image.open(image_path(k)).convert("RGB"))
              for k in (p.reference_image_key, p.base_image_key, p.target_image_key)]
    return np.concatenate(images, axis=1)
