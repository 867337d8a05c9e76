"""Evaluation: mean alignment score of fresh samples on held-out prompts (DESIGN §1).

The paper's claim is checked per checkpoint: the mean CLIP score on the test split rises more
with D-Fusion pairs than with plain pairs. Prompts come from the shipped prompt set (or a file
in the same JSON-lines format).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import torch

from dfusion_core import pipeline
from dfusion_core.config import SamplingConfig
from dfusion_core.errors import ConfigError
from dfusion_core.models import DiffusionModel
from dfusion_core.scoring import Scorer

log = logging.getLogger(__name__)

Split = Literal["train", "test"]
PROMPTS_FILE = "d-fusion-templates.jsonl"


@dataclass(frozen=True)
class PromptRecord:
    """One prompt: its text, the item words that guide fusion (may be empty) with one mask
    threshold each (in [0, 1]), its template family and its split."""

    text: str
    items: tuple[str, ...]
    mask_thresholds: tuple[float, ...]
    template: str
    split: str


def prompts_path() -> Path:
    return Path(str(resources.files("dfusion_core") / "assets" / "prompts" / PROMPTS_FILE))


def load_prompts(split: Split | None = None, path: str | Path | None = None) -> list[PromptRecord]:
    """Records of a JSON-lines prompt file (default: the shipped D-Fusion set), optionally one split."""
    if split not in (None, "train", "test"):
        raise ConfigError("split", f"split must be 'train', 'test' or None, got {split!r}")
    source = Path(path) if path is not None else prompts_path()
    records = []
    for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            record = PromptRecord(
                text=str(raw["text"]),
                items=tuple(str(i) for i in raw.get("items") or ()),
                mask_thresholds=tuple(float(t) for t in raw.get("mask_thresholds") or ()),
                template=str(raw.get("template", "")),
                split=str(raw.get("split", "")),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError("prompts", f"{source}:{number}: not a prompt record ({exc})") from exc
        if len(record.items) != len(record.mask_thresholds):
            raise ConfigError("prompts", f"{source}:{number}: {len(record.items)} items but "
                              f"{len(record.mask_thresholds)} mask_thresholds; give one per item")
        if split is None or record.split == split:
            records.append(record)
    return records


def evaluate_scores(
    model: DiffusionModel,
    scorer: Scorer,
    prompts: Sequence[str | PromptRecord],
    seeds: Sequence[int],
    sampling_config: SamplingConfig,
    *,
    policy_version: int = 0,
) -> torch.Tensor:
    """Scores [len(prompts) * len(seeds)], prompt-major: every prompt sampled once per seed
    (seed s of every prompt uses the same noise, so checkpoints compare on equal footing)."""
    if not prompts or not seeds:
        raise ConfigError("prompts", "evaluation needs at least one prompt and one seed")
    texts = [p.text if isinstance(p, PromptRecord) else str(p) for p in prompts]
    jobs = [(text, int(seed)) for text in texts for seed in seeds]
    scores = []
    for start in range(0, len(jobs), sampling_config.batch_size):
        chunk = jobs[start : start + sampling_config.batch_size]
        trajs = pipeline.sample(model, [t for t, _ in chunk], sampling_config, seeds=[s for _, s in chunk],
                                policy_version=policy_version)
        images = torch.stack([t.image for t in trajs if t.image is not None])
        scores.append(scorer.score(images, [t for t, _ in chunk]).float().cpu())
    return torch.cat(scores)


def evaluate(
    model: DiffusionModel,
    scorer: Scorer,
    prompts: Sequence[str | PromptRecord],
    seeds: Sequence[int],
    sampling_config: SamplingConfig,
    *,
    policy_version: int = 0,
) -> float:
    """Mean score of the model's samples for every (prompt, seed) under the current weights."""
    scores = evaluate_scores(model, scorer, prompts, seeds, sampling_config, policy_version=policy_version)
    mean = float(scores.mean())
    log.info("evaluation (policy %d): mean score %.5f over %d samples", policy_version, mean, scores.numel())
    return mean
