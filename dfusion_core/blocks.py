"""The denoiser's attention blocks in the authors' ordinal numbering: which exist, which fuse by
default, and a `fusion.blocks` range checked against them.

A UNet counts its blocks with attention as the authors do: down blocks, then mid, then up. A
transformer denoiser (PixArt-alpha/Sigma's `transformer_blocks`, the toy DiT) counts its blocks in
order; each holds one self-attention (`attn1`) and one cross-attention (`attn2`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers import UNet2DConditionModel

from dfusion_core.errors import ConfigError


def attention_blocks(unet: UNet2DConditionModel) -> list[str]:
    """Module-name prefixes of the blocks that have attention, in the authors' ordinal order:
    down blocks first, then mid, then up blocks (a transformer: its blocks in order)."""
    if is_transformer(unet):
        return [f"transformer_blocks.{i}" for i in range(len(unet.transformer_blocks))]
    names = [f"down_blocks.{i}" for i, b in enumerate(unet.down_blocks) if getattr(b, "attentions", None)]
    if unet.mid_block is not None and getattr(unet.mid_block, "attentions", None):
        names.append("mid_block")
    names += [f"up_blocks.{i}" for i, b in enumerate(unet.up_blocks) if getattr(b, "attentions", None)]
    return names


def is_transformer(unet: torch.nn.Module) -> bool:
    """A denoiser of transformer blocks at one resolution (DiT / PixArt), not a UNet."""
    return hasattr(unet, "transformer_blocks") and not hasattr(unet, "down_blocks")


def default_fused_blocks(unet: UNet2DConditionModel) -> tuple[int, int]:
    """Mid block and every decoder block with attention (SD 2.1: 3..6). A transformer has neither;
    its second half stands in for them, the blocks nearest the output, as the decoder is."""
    names = attention_blocks(unet)
    if is_transformer(unet):
        return len(names) // 2, len(names) - 1
    first = next((i for i, n in enumerate(names) if not n.startswith("down_blocks")), None)
    if first is None:
        raise ConfigError("fusion.blocks", "the UNet has no mid or decoder attention blocks to fuse")
    return first, len(names) - 1


def block_ordinal(unet: UNet2DConditionModel, processor_name: str) -> int:
    for i, prefix in enumerate(attention_blocks(unet)):
        if processor_name.startswith(prefix + "."):
            return i
    raise ConfigError("processor", f"{processor_name} is not inside an attention block")



def resolve_blocks(unet: UNet2DConditionModel, blocks: Sequence[int] | None) -> frozenset[int]:
    lo, hi = default_fused_blocks(unet) if blocks is None else blocks
    count = len(attention_blocks(unet))
    if not 0 <= lo <= hi < count:
        raise ConfigError("fusion.blocks", f"({lo}, {hi}) is outside the UNet's {count} attention blocks 0..{count - 1}")
    return frozenset(range(lo, hi + 1))


def mask_side(unet: torch.nn.Module, latent_side: int, resolution: int | None) -> int:
    """The side of the fusion mask grid: `resolution` if the job set one; else, for a transformer,
    its token grid (every layer works there), for a UNet latent side / 4 (SD 2.1's 16x16 at 64x64
    latents, the authors' setting)."""
    if resolution:
        return resolution
    if is_transformer(unet):
        config: Any = unet.config
        return max(1, int(latent_side) // int(config.patch_size))
    return max(1, int(latent_side) // 4)
