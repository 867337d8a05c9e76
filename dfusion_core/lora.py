"""LoRA adapters with peft: attach, switch off for the reference model, save in diffusers format.

The checkpoint bytes are exactly what `StableDiffusionPipeline.save_lora_weights` writes
(`pytorch_lora_weights.safetensors`), so plain diffusers' `pipe.load_lora_weights(dir)`
accepts them.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from diffusers.utils import convert_state_dict_to_diffusers, convert_unet_state_dict_to_peft
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load

from dfusion_core.errors import ConfigError

ADAPTER = "default"
WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0"]


def has_lora(unet: UNet2DConditionModel) -> bool:
    return bool(getattr(unet, "peft_config", None)) and ADAPTER in unet.peft_config


def add_lora(unet: UNet2DConditionModel, rank: int, alpha: float | None = None, seed: int = 0) -> None:
    """Attach a trainable LoRA (B = 0, so the policy starts equal to the base model).

    A's random init is drawn under `seed` inside a forked RNG: same seed, same adapter.
    """
    if has_lora(unet):
        raise ConfigError("lora", "the UNet already has a LoRA adapter")
    # peft annotates lora_alpha as int but only ever divides it by r: a float alpha is kept exactly
    config = LoraConfig(r=rank, lora_alpha=alpha or rank,  # type: ignore[arg-type]
                        init_lora_weights=True, target_modules=TARGET_MODULES)
    devices = [unet.device] if unet.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        unet.add_adapter(config, adapter_name=ADAPTER)
    for name, param in unet.named_parameters():
        if "lora_" in name:
            param.data = param.data.float()  # trainable weights stay fp32 under autocast


def lora_parameters(unet: UNet2DConditionModel) -> list[torch.nn.Parameter]:
    return [p for n, p in unet.named_parameters() if "lora_" in n]


@contextlib.contextmanager
def adapters_disabled(unet: UNet2DConditionModel) -> Iterator[None]:
    """pi_ref: the base model with the adapters off."""
    if not has_lora(unet):
        yield
        return
    unet.disable_adapters()
    try:
        yield
    finally:
        unet.enable_adapters()


def lora_state_dict(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    """The adapter in diffusers' key format, without the 'unet.' prefix."""
    state = get_peft_model_state_dict(unet, adapter_name=ADAPTER)
    return {k: v.detach().float().cpu().contiguous() for k, v in convert_state_dict_to_diffusers(state).items()}


def save_lora(unet: UNet2DConditionModel, directory: str | Path) -> Path:
    """Write `pytorch_lora_weights.safetensors` with diffusers' own writer."""
    if not has_lora(unet):
        raise ConfigError("lora", "the UNet has no LoRA adapter to save")
    config = unet.peft_config[ADAPTER]
    metadata = {"r": config.r, "lora_alpha": config.lora_alpha, "target_modules": sorted(config.target_modules)}
    StableDiffusionPipeline.save_lora_weights(
        str(directory),
        unet_lora_layers=lora_state_dict(unet),
        unet_lora_adapter_metadata=metadata,
        safe_serialization=True,
    )
    return Path(directory) / WEIGHTS_NAME


def lora_bytes(unet: UNet2DConditionModel) -> bytes:
    """The checkpoint file's bytes; equal adapters give equal bytes (see `_canonical_header`)."""
    with tempfile.TemporaryDirectory() as tmp:
        return _canonical_header(save_lora(unet, tmp).read_bytes())


def _canonical_header(data: bytes) -> bytes:
    """safetensors writes `__metadata__` in hash-map order, so two saves of one adapter can differ.
    Sort the metadata keys (same length, same tensor offsets) so a retried save rewrites equal bytes."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    meta = header.pop("__metadata__", None)
    if meta is not None:
        header = {"__metadata__": dict(sorted(meta.items())), **header}
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > n:  # never expected: keep the writer's bytes rather than break the file
        return data
    return data[:8] + text.ljust(n, b" ") + data[8 + n :]


def load_lora_bytes(unet: UNet2DConditionModel, data: bytes) -> None:
    """Set the UNet's adapter weights from checkpoint bytes (adding the adapter if absent)."""
    state = load(data)
    prefix = "unet."
    unet_state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not unet_state:
        raise ConfigError("checkpoint", "no UNet LoRA weights in the checkpoint")
    peft_state = convert_unet_state_dict_to_peft(unet_state)
    if not has_lora(unet):
        rank = next(v.shape[0] for k, v in peft_state.items() if "lora_A" in k)
        add_lora(unet, rank)
    result = set_peft_model_state_dict(unet, peft_state, adapter_name=ADAPTER)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ConfigError("checkpoint", f"checkpoint keys do not fit this UNet: {unexpected[:3]}")
