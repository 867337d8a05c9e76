"""The UNet's attention blocks in the authors' ordinal numbering (down, mid, up): which exist,
which fuse by default, and a `fusion.blocks` range checked against them."""

from __future__ import annotations

from collections.abc import Sequence

from diffusers import UNet2DConditionModel

from dfusion_core.errors import ConfigError


def attention_blocks(unet: UNet2DConditionModel) -> list[str]:
    """Module-name prefixes of the blocks that have attention, in the authors' ordinal order:
    down blocks first, then mid, then up blocks."""
    names = [f"down_blocks.{i}" for i, b in enumerate(unet.down_blocks) if getattr(b, "attentions", None)]
    if unet.mid_block is not None and getattr(unet.mid_block, "attentions", None):
        names.append("mid_block")
    names += [f"up_blocks.{i}" for i, b in enumerate(unet.up_blocks) if getattr(b, "attentions", None)]
    return names


def default_fused_blocks(unet: UNet2DConditionModel) -> tuple[int, int]:
    """Mid block and every decoder block with attention (SD 2.1: 3..6)."""
    names = attention_blocks(unet)
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
