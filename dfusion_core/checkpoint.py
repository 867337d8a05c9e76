"""Trainer checkpoints through a `BlobStore`: no pickle, safetensors + JSON only.

Layout under a prefix, one folder per policy version:
  <prefix>/<version>/pytorch_lora_weights.safetensors   LoRA bytes exactly as diffusers writes them
  <prefix>/<version>/trainer_state.safetensors          AdamW state tensors; JSON metadata with the
                                                        step, policy version, seed, config, groups
The state file is written last and marks a complete checkpoint. The trainer draws all randomness
from generators seeded by (seed, step), so (seed, step) is its whole RNG state: loading a
checkpoint and training on gives bit-identical weights to a run that never stopped (same device).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import torch
from safetensors.torch import load, save

from dfusion_core.config import TrainingConfig
from dfusion_core.errors import ConfigError
from dfusion_core.lora import WEIGHTS_NAME, load_lora_bytes, lora_bytes
from dfusion_core.models import DiffusionModel
from dfusion_core.storage import BlobStore
from dfusion_core.training import Trainer

log = logging.getLogger(__name__)

FORMAT = "dfusion.trainer_state/1"
STATE_NAME = "trainer_state.safetensors"


def checkpoint_key(prefix: str, version: int, name: str) -> str:
    """`<prefix>/<version>/<name>` (prefix without a trailing slash; '' for the store's root)."""
    if version < 0:
        raise ConfigError("version", f"checkpoint versions are non-negative integers, got {version}")
    prefix = prefix.strip("/")
    return f"{prefix}/{version}/{name}" if prefix else f"{version}/{name}"


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
        "step": trainer.step,
        "policy_version": trainer.policy_version,
        "seed": trainer.seed,
        "config": trainer.config.model_dump(mode="json"),
        "param_groups": groups,
        "parameter_names": trainer.parameter_names,
        "scaler": trainer.scaler.state_dict() if trainer.scaler is not None else None,
    }
    return save(tensors, metadata={"dfusion": json.dumps(header)})


def save_checkpoint(store: BlobStore, prefix: str, trainer: Trainer) -> int:
    """Write the trainer's LoRA and state under `<prefix>/<policy_version>/`; returns the version.

    Keys derive from (prefix, version), so a retried save overwrites with identical bytes.
    """
    version = trainer.policy_version
    store.put(checkpoint_key(prefix, version, WEIGHTS_NAME), lora_bytes(trainer.model.unet))
    store.put(checkpoint_key(prefix, version, STATE_NAME), trainer_state_bytes(trainer))
    log.info("saved checkpoint %s version %d (step %d)", prefix, version, trainer.step)
    return version


def load_checkpoint(
    store: BlobStore,
    prefix: str,
    version: int,
    model: DiffusionModel,
    *,
    config: TrainingConfig | None = None,
) -> Trainer:
    """A trainer on `model` with the checkpoint's LoRA weights, optimizer state, step and seed.

    `config` overrides the stored one (e.g. a new learning rate); the LoRA rank must match.
    """
    data = store.get(checkpoint_key(prefix, version, STATE_NAME))
    header = read_header(data)
    tensors = load(data)
    cfg = config if config is not None else TrainingConfig(**header["config"])
    trainer = Trainer(model, cfg, seed=int(header["seed"]), policy_version=int(header["policy_version"]))
    load_lora_bytes(model.unet, store.get(checkpoint_key(prefix, version, WEIGHTS_NAME)))
    if list(header["parameter_names"]) != trainer.parameter_names:
        raise ConfigError("checkpoint", "the checkpoint's LoRA parameters do not match this model's")
    trainer.optimizer.load_state_dict(_optimizer_state(trainer, tensors, header["param_groups"], config is None))
    trainer.step = int(header["step"])
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


def list_versions(store: BlobStore, prefix: str) -> list[int]:
    """Versions under `prefix` with a complete checkpoint (both files), ascending."""
    head = prefix.strip("/") + "/" if prefix.strip("/") else ""
    keys = set(store.list(head))
    versions = set()
    for key in keys:
        parts = key[len(head):].split("/")
        if len(parts) == 2 and parts[1] == STATE_NAME and parts[0].isdigit():
            version = int(parts[0])
            if checkpoint_key(prefix, version, WEIGHTS_NAME) in keys:
                versions.add(version)
    return sorted(versions)


def latest_version(store: BlobStore, prefix: str) -> int | None:
    """The highest complete checkpoint version under `prefix`, or None when there is none."""
    versions = list_versions(store, prefix)
    return versions[-1] if versions else None
