"""Attention processors for D-Fusion, installed with `unet.set_attn_processor` (no fork).

`FusionController` holds the fusion state every processor shares: the UNet batch layout,
which blocks and steps fuse, the item tokens, the mask being accumulated and the masks
already finished. `FusionAttnProcessor` is diffusers' `AttnProcessor2_0` (SDPA) with two
hooks:

- cross-attention at the mask resolution: read the reference rows' attention probabilities
  of the item tokens (only those rows are computed explicitly; the layer's output stays SDPA);
- self-attention at a fused block and step: the target rows use
  K = K_ref * M + K_tgt * (1 - M), V likewise, M on the key/value token axis.

Source of the copied part: diffusers v0.42.1, `models/attention_processor.py`,
`AttnProcessor2_0.__call__`. Changes: the two hooks above; the deprecated `scale` argument
and `attn.norm_q/norm_k` kept; nothing else.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention

from dfusion_core.blocks import attention_blocks
from dfusion_core.errors import ConfigError


@dataclass
class FusionController:
    """Shared state of one fusion run over n pairs.

    Each UNet call holds up to two roles, each n rows per CFG half: rows are
    [uncond ref, uncond tgt, cond ref, cond tgt], absent roles left out. The reference runs
    one step ahead of the target: the call that computes the reference at step i records
    its item mask and its self-attention K/V at the fused blocks; the target uses them at
    step i in the next call. That keeps the authors' same-step mask (the mask needs the
    reference's whole pass, decoder included) while batching both into one call per step.
    """

    n: int
    blocks: frozenset[int]
    steps: frozenset[int]
    mask_resolution: int
    latent_hw: tuple[int, int]
    token_positions: list[list[list[int]]]  # [pair][item] -> token indices
    thresholds: list[list[float]]  # [pair][item], used by mask_mode 'absolute'
    mask_mode: str = "absolute"  # FusionConfig.mask_mode: absolute | minmax | quantile
    mask_level: float = 0.5  # FusionConfig.mask_level, the cut of the relative modes
    ref_step: int | None = None  # step of the reference rows in the current call, None = absent
    tgt_step: int | None = None  # step of the target rows in the current call, None = absent
    masks: list[torch.Tensor] = field(default_factory=list)  # per step: [n, R*R, items] binary
    _kv: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # ref K/V of the last call
    _pending_kv: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    _acc: torch.Tensor | None = None
    _acc_layers: int = 0
    _thr: torch.Tensor | None = None
    _item_index: list[list[torch.Tensor]] = field(default_factory=list)  # token_positions as index tensors
    _shared_items: bool = False  # every pair has the same token_positions

    def __post_init__(self) -> None:
        if len(self.token_positions) != self.n or len(self.thresholds) != self.n:
            raise ConfigError("items", f"need item tokens and thresholds for each of the {self.n} pairs")
        for toks, thr in zip(self.token_positions, self.thresholds, strict=True):
            if len(toks) != len(thr):
                raise ConfigError("mask_thresholds", f"{len(thr)} thresholds for {len(toks)} items")
            if not toks:
                raise ConfigError("items", "every pair needs at least one item to build its mask")
        # pairs of one prompt (a fuse task's) share their items: then every pair's are read at once
        self._shared_items = all(toks == self.token_positions[0] for toks in self.token_positions)

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(r for r, s in (("ref", self.ref_step), ("tgt", self.tgt_step)) if s is not None)

    # -- call bookkeeping ------------------------------------------------------------------
    def begin_call(self, ref_step: int | None, tgt_step: int | None) -> None:
        if ref_step is not None and ref_step != len(self.masks):
            raise ConfigError("fusion", f"reference step {ref_step} out of order (expected {len(self.masks)})")
        if tgt_step is not None and tgt_step >= len(self.masks):
            raise ConfigError("fusion", f"target step {tgt_step} runs before the reference made its mask")
        self.ref_step, self.tgt_step = ref_step, tgt_step
        self._acc, self._acc_layers = None, 0

    def end_call(self) -> None:
        """Binarise the reference's averaged probabilities into this step's item masks."""
        if self.ref_step is not None:
            if self._acc is None or self._acc_layers == 0:
                raise ConfigError(
                    "fusion.mask_resolution",
                    f"no cross-attention layer works at {self.mask_resolution}x{self.mask_resolution}",
                )
            avg = self._acc / self._acc_layers  # [n, L, items]
            self.masks.append(self.binarise(avg).float())
            self._kv, self._pending_kv = self._pending_kv, {}
        self._acc = None

    def binarise(self, avg: torch.Tensor) -> torch.Tensor:
        """Item probabilities [n, L, items] -> item masks, by FusionConfig.mask_mode.

        'absolute' (the authors'): p >= the item's threshold. The relative modes cut each item's own
        map, so the mask follows where the item is rather than how peaked the model's attention is:
        'minmax': (p - min) / (max - min) >= level over the L cells (a flat map gives an empty mask);
        'quantile': p >= the map's level-quantile (the top 1 - level of cells; ties at the cut are kept).
        """
        if self.mask_mode == "absolute":
            if self._thr is None or self._thr.device != avg.device:
                self._thr = torch.tensor(self.thresholds, dtype=avg.dtype).to(avg.device)[:, None, :]
            return avg >= self._thr
        if self.mask_mode == "minmax":
            lo, hi = avg.amin(dim=1, keepdim=True), avg.amax(dim=1, keepdim=True)
            return ((avg - lo) >= self.mask_level * (hi - lo)) & (hi > lo)  # a flat map locates nothing
        if self.mask_mode == "quantile":
            return avg >= torch.quantile(avg.float(), self.mask_level, dim=1, keepdim=True).to(avg.dtype)
        raise ConfigError("fusion.mask_mode", f"unknown mask mode {self.mask_mode!r}")

    def fusing(self, block: int) -> bool:
        return block in self.blocks and (self.ref_step in self.steps or self.tgt_step in self.steps)

    # -- hooks called by the processors ----------------------------------------------------
    def _layer_hw(self, tokens: int) -> tuple[int, int]:
        h, w = self.latent_hw
        factor = math.sqrt(h * w / tokens)
        return round(h / factor), round(w / factor)

    def records(self, tokens: int) -> bool:
        if self.ref_step is None:
            return False
        h, w = self._layer_hw(tokens)
        return h == self.mask_resolution and h * w == tokens

    def record_cross(self, query: torch.Tensor, key: torch.Tensor, scale: float,
                     bias: torch.Tensor | None = None) -> None:
        """query [B, heads, L, d], key [B, heads, S, d]: accumulate the reference's item probabilities.
        `bias` [B, heads, 1 or L, S] is the layer's attention mask as added to the scores (a
        denoiser that masks caption padding, as PixArt does): the probabilities are the layer's own."""
        rows = self._slices("ref")[1]  # conditional half only
        scores = (query[rows].float() @ key[rows].float().transpose(-1, -2)) * scale
        if bias is not None:
            scores = scores + bias[rows].float()
        probs = torch.softmax(scores, dim=-1)
        probs = probs.mean(dim=1)  # over heads: [n, L, S]
        index = self._items_on(probs.device)
        if self._shared_items:  # each item's probabilities summed over its tokens, all pairs at once
            layer = torch.stack([probs.index_select(-1, toks).sum(-1) for toks in index[0]], -1)
        else:
            layer = torch.stack(
                [torch.stack([probs[k].index_select(-1, toks).sum(-1) for toks in index[k]], -1) for k in range(self.n)]
            )  # [n, L, items]
        self._acc = layer if self._acc is None else self._acc + layer
        self._acc_layers += 1

    def _items_on(self, device: torch.device) -> list[list[torch.Tensor]]:
        """token_positions as index tensors [tokens] on `device`, made once (not a list per layer and call)."""
        if not self._item_index or self._item_index[0][0].device != device:
            self._item_index = [[torch.tensor(toks, dtype=torch.long, device=device) for toks in pair]
                                for pair in (self.token_positions[:1] if self._shared_items else self.token_positions)]
        return self._item_index

    def fuse_kv(self, name: str, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Self-attention K/V [B, heads, L, d]: keep the reference's, blend the target's."""
        if self.ref_step in self.steps:
            ref_rows = self._slices("ref")
            self._pending_kv[name] = (torch.cat([key[r] for r in ref_rows]), torch.cat([value[r] for r in ref_rows]))
        if self.tgt_step not in self.steps:
            return key, value
        assert self.tgt_step is not None
        k_ref, v_ref = self._kv[name]
        mask = self._resized_mask(self.masks[self.tgt_step], key.shape[2]).to(key.dtype)[:, None, :, None]  # [n,1,L,1]
        inverse = 1 - mask
        roles = self.roles
        key, value = key.clone(), value.clone()
        # the target's rows of both CFG halves at once: rows are [half, role, pair] (see _slices)
        for fused, ref in ((key, k_ref), (value, v_ref)):
            rows = fused.view(2, len(roles), self.n, *fused.shape[1:])[:, roles.index("tgt")]
            rows.copy_(_blend(ref.view(2, self.n, *ref.shape[1:]), rows, mask, inverse))
        return key, value

    def _resized_mask(self, item_masks: torch.Tensor, tokens: int) -> torch.Tensor:
        """Union over items, nearest-resized to the layer: [n, L]."""
        r = self.mask_resolution
        h, w = self._layer_hw(tokens)
        union = item_masks.amax(dim=-1).view(self.n, 1, r, r * self.latent_hw[1] // self.latent_hw[0])
        return F.interpolate(union, size=(h, w), mode="nearest").view(self.n, h * w)

    def _slices(self, role: str) -> tuple[slice, slice]:
        """The role's rows in the (uncond, cond) halves: contiguous slices, so indexing
        stays a view and never copies an index tensor to the device."""
        roles = self.roles
        g, r = len(roles), roles.index(role)
        return tuple(slice((h * g + r) * self.n, (h * g + r + 1) * self.n) for h in (0, 1))  # type: ignore[return-value]


def _blend(ref: torch.Tensor, tgt: torch.Tensor, mask: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """ref * M + tgt * (1 - M), `inverse` = 1 - M."""
    return ref * mask + tgt * inverse


def cache_call_signature(processor_type: type) -> type:
    """Keep `processor_type.__call__`'s signature on the function, where inspect finds it.

    diffusers' `Attention.forward` calls `inspect.signature(processor.__call__)` on every call (to
    warn about unused keyword arguments): some 40 us of CPU each, one per attention layer per
    denoiser call, rebuilt from the code every time. With `__signature__` set, inspect returns it
    as it is. What it returns does not change: it is the same signature, computed once.
    """
    call: Any = processor_type.__call__
    if getattr(call, "__signature__", None) is None:
        call.__signature__ = inspect.signature(call)
    return processor_type


def cache_processor_signatures(*modules: torch.nn.Module | None) -> None:
    """`cache_call_signature` for the type of every attention processor in `modules`."""
    for module in modules:
        for sub in module.modules() if module is not None else ():
            if isinstance(sub, Attention):
                cache_call_signature(type(sub.processor))


@cache_call_signature
class FusionAttnProcessor:
    """SDPA attention with D-Fusion's hooks; identical to `AttnProcessor2_0` when idle.

    `classic=True` materialises the attention probabilities everywhere, as the authors' code
    does (no SDPA): the reference-like path the benchmarks compare against. Same results.
    """

    def __init__(self, controller: FusionController | None, name: str, block: int | None,
                 classic: bool = False) -> None:
        self.controller = controller
        self.name = name
        self.block = block
        self.classic = classic

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        ctl = self.controller
        is_cross = encoder_hidden_states is not None
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        if ctl is not None:
            if is_cross and ctl.records(query.shape[2]):
                ctl.record_cross(query, key, attn.scale, attention_mask)
            elif not is_cross and self.block is not None and ctl.fusing(self.block):
                key, value = ctl.fuse_kv(self.name, key, value)

        if self.classic:
            scores = (query @ key.transpose(-1, -2)) * attn.scale
            if attention_mask is not None:
                scores = scores + attention_mask
            hidden_states = scores.softmax(dim=-1).to(value.dtype) @ value
        else:
            hidden_states = F.scaled_dot_product_attention(
                query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
            )
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def install(unet: UNet2DConditionModel, controller: FusionController | None, classic: bool = False) -> None:
    """Put a FusionAttnProcessor on every attention layer, sharing `controller`."""
    blocks = attention_blocks(unet)
    procs = {}
    for name in unet.attn_processors:
        block = next((i for i, p in enumerate(blocks) if name.startswith(p + ".")), None)
        procs[name] = FusionAttnProcessor(controller, name, block, classic)
    unet.set_attn_processor(procs)


def uninstall(unet: UNet2DConditionModel) -> None:
    """Back to stock SDPA processors."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    unet.set_attn_processor(cache_call_signature(AttnProcessor2_0)())
