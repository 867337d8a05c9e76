"""Trainer checkpoints through a `BlobStore`: no pickle, safetensors + JSON only.

Layout under a prefix, one folder per optimizer step (the trainer's `optimizer_step`):
  <prefix>/<step>/pytorch_lora_weights.safetensors   LoRA bytes exactly as diffusers writes them
  <prefix>/<step>/trainer_state.safetensors          AdamW state tensors; JSON metadata with the
                                                     step, seed, config, groups
The state file is written last and marks a complete checkpoint. The trainer draws all randomness
from generators seeded by (seed, step), so (seed, step) is its whole RNG state: loading a
checkpoint and training on gives bit-identical weights to a run that never stopped (same device).
Files written before the rename also carry "policy_version" (equal to "step"); it is ignored.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import load, save

from dfusion_core.config import TrainingConfig
from dfusion_core.errors import ConfigError
from dfusion_core.lora import ADAPTER, WEIGHTS_NAME, has_lora, load_lora_bytes, lora_bytes
from dfusion_core.models import DiffusionModel
from dfusion_core.storage import BlobStore
from dfusion_core.training import StepMetrics, Trainer, TrainPair

log = logging.getLogger(__name__)

FORMAT = "dfusion.trainer_state/1"
STATE_NAME = "trainer_state.safetensors"


def checkpoint_key(prefix: str, step: int, name: str) -> str:
    """`<prefix>/<step>/<name>` (prefix without a trailing slash; '' for the store's root)."""
    if step < 0:
        raise ConfigError("step", f"checkpoint steps are non-negative integers, got {step}")
    prefix = prefix.strip("/")
    return f"{prefix}/{step}/{name}" if prefix else f"{step}/{name}"


def trainer_state_bytes(trainer: Trainer) -> bytes:
    """The optimizer state as safetensors (keyed by LoRA parameter name) plus JSON metadata."""
    state = trainer.optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for index, name in enumerate(trainer.parameter_names):
        for key, value in state["state"].get(index, {}).items():
            if not isinstance(value, torch.Tensor):
                value = torch.tensor(value)
            tensors[f"optimizer/{name}/{key}"] = value.detach().cpu().contiguous()
    groups = [{k: v for k, v in g.items() if k != "params"} for g in state["param_groups"]]
    header = {
        "format": FORMAT,
        "step": trainer.optimizer_step,
        "seed": trainer.seed,
        "config": trainer.config.model_dump(mode="json"),
        "param_groups": groups,
        "parameter_names": trainer.parameter_names,
        "scaler": trainer.scaler.state_dict() if trainer.scaler is not None else None,
    }
    return save(tensors, metadata={"dfusion": json.dumps(header)})


def save_checkpoint(store: BlobStore, prefix: str, trainer: Trainer) -> int:
    """Write the trainer's LoRA and state under `<prefix>/<optimizer_step>/`; returns the step.

    Keys derive from (prefix, step), so a retried save overwrites with identical bytes.
    """
    step = trainer.optimizer_step
    store.put(checkpoint_key(prefix, step, WEIGHTS_NAME), lora_bytes(trainer.model.unet))
    store.put(checkpoint_key(prefix, step, STATE_NAME), trainer_state_bytes(trainer))
    log.info("saved checkpoint %s at optimizer step %d", prefix, step)
    return step


def load_checkpoint(
    store: BlobStore,
    prefix: str,
    step: int,
    model: DiffusionModel,
    *,
    config: TrainingConfig | None = None,
) -> Trainer:
    """A trainer on `model` with the checkpoint's LoRA weights, optimizer state, step and seed.

    `config` overrides the stored one (e.g. a new learning rate); the LoRA rank must match.
    """
    data = store.get(checkpoint_key(prefix, step, STATE_NAME))
    header = read_header(data)
    tensors = load(data)
    cfg = config if config is not None else TrainingConfig(**header["config"])
    trainer = Trainer(model, cfg, seed=int(header["seed"]))
    load_lora_bytes(model.unet, store.get(checkpoint_key(prefix, step, WEIGHTS_NAME)))
    if list(header["parameter_names"]) != trainer.parameter_names:
        raise ConfigError("checkpoint", "the checkpoint's LoRA parameters do not match this model's")
    trainer.optimizer.load_state_dict(_optimizer_state(trainer, tensors, header["param_groups"], config is None))
    trainer.optimizer_step = int(header["step"])
    if trainer.scaler is not None and header.get("scaler"):
        trainer.scaler.load_state_dict(header["scaler"])
    return trainer


def _optimizer_state(
    trainer: Trainer, tensors: dict[str, torch.Tensor], groups: list[dict[str, Any]], keep_groups: bool
) -> dict[str, Any]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for index, name in enumerate(trainer.parameter_names):
        head = f"optimizer/{name}/"
        entry = {key[len(head):]: value for key, value in tensors.items() if key.startswith(head)}
        if entry:
            state[index] = entry
    current = trainer.optimizer.state_dict()["param_groups"]
    if len(groups) != len(current):
        raise ConfigError("checkpoint", f"{len(groups)} optimizer groups stored, {len(current)} expected")
    param_groups = []
    for stored, now in zip(groups, current, strict=True):
        group = {**now, **(stored if keep_groups else {})}
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
        group["params"] = now["params"]
        param_groups.append(group)
    return {"state": state, "param_groups": param_groups}


def read_header(data: bytes) -> dict[str, Any]:
    """The JSON metadata of a trainer-state file."""
    try:
        n = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8 : 8 + n]).get("__metadata__", {})
        header = json.loads(meta["dfusion"])
    except (ValueError, KeyError) as exc:
        raise ConfigError("checkpoint", f"not a dfusion trainer state: {exc}") from exc
    if header.get("format") != FORMAT:
        raise ConfigError("checkpoint", f"unknown trainer-state format {header.get('format')!r}")
    return header


def list_steps(store: BlobStore, prefix: str) -> list[int]:
    """Optimizer steps under `prefix` with a complete checkpoint (both files), ascending."""
    head = prefix.strip("/") + "/" if prefix.strip("/") else ""
    keys = set(store.list(head))
    steps = set()
    for key in keys:
        parts = key[len(head):].split("/")
        if len(parts) == 2 and parts[1] == STATE_NAME and parts[0].isdigit():
            step = int(parts[0])
            if checkpoint_key(prefix, step, WEIGHTS_NAME) in keys:
                steps.add(step)
    return sorted(steps)


def latest_step(store: BlobStore, prefix: str) -> int | None:
    """The highest optimizer step with a complete checkpoint under `prefix`, or None when there is none."""
    steps = list_steps(store, prefix)
    return steps[-1] if steps else None


def start_or_resume(
    model: DiffusionModel,
    config: TrainingConfig,
    *,
    store: BlobStore,
    resume_from: str | None,
    seed: int,
    lora_seed: int,
) -> Trainer:
    """A trainer on `model`: fresh (LoRA drawn from `lora_seed`) when `resume_from` is None, else
    the latest checkpoint under that prefix (its LoRA, AdamW state, step and seed; `config` wins
    over the stored one). An adapter already on the model is dropped first, so a process that
    trained another unit before starts from the base weights either way.
    """
    unet: Any = model.unet  # diffusers' lazy imports hide the PEFT mixin from type checkers
    if has_lora(unet):
        unet.delete_adapters(ADAPTER)
    if resume_from is None:
        return Trainer(model, config, seed=seed, lora_seed=lora_seed)
    step = latest_step(store, resume_from)
    if step is None:
        raise ConfigError("resume_from", f"no complete checkpoint under {resume_from!r}")
    return load_checkpoint(store, resume_from, step, model, config=config)


@dataclass(frozen=True)
class UnitResult:
    """A training unit's outcome. before: `Trainer.pair_metrics` on its pairs under the weights it
    resumed from, which have not seen them ({} without pairs); steps: one per optimizer step."""

    trainer: Trainer
    before: dict[str, float]
    steps: list[StepMetrics]


def train_unit(
    model: DiffusionModel,
    config: TrainingConfig,
    pairs: Sequence[TrainPair],
    *,
    store: BlobStore,
    resume_from: str | None,
    save_to: str,
    seed: int,
    lora_seed: int,
) -> UnitResult:
    """One resumable unit of training: `start_or_resume`, `Trainer.train_epoch` over `pairs` (no step
    without pairs), then the trainer saved under `save_to`, where the next unit resumes from."""
    trainer = start_or_resume(model, config, store=store, resume_from=resume_from, seed=seed, lora_seed=lora_seed)
    before = trainer.pair_metrics(pairs) if pairs else {}
    steps = trainer.train_epoch(pairs) if pairs else []
    save_checkpoint(store, save_to, trainer)
    return UnitResult(trainer, before, steps)
