"""What a UNet call is conditioned on, for every family dfusion drives.

SD 1.x / 2.x condition on the text encoder's hidden states alone. SDXL also takes the second text
encoder's pooled, projected embedding and six "micro-conditioning" numbers (original size, crop
top-left, target size), passed to the UNet as `added_cond_kwargs`. `Conditioning` carries them
together, so sampling, fusion and training batch, split and move one object, and a plain
tensor of hidden states still works wherever a `Conditioning` is accepted (`Conditioning.of`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dfusion_core.errors import ConfigError


@dataclass(frozen=True)
class Conditioning:
    """hidden [B, L, D]; SDXL only: pooled [B, P] (`text_embeds`) and time_ids [B, 6]."""

    hidden: torch.Tensor
    pooled: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if (self.pooled is None) != (self.time_ids is None):
            raise ConfigError("conditioning", "SDXL conditioning needs both pooled embeddings and time ids")
        for extra in (self.pooled, self.time_ids):
            if extra is not None and extra.shape[0] != self.hidden.shape[0]:
                raise ConfigError("conditioning", f"batch sizes differ: {extra.shape[0]} vs {self.hidden.shape[0]}")

    @staticmethod
    def of(value: Conditioning | torch.Tensor) -> Conditioning:
        return value if isinstance(value, Conditioning) else Conditioning(value)

    @property
    def added(self) -> bool:
        return self.pooled is not None

    def __len__(self) -> int:
        return int(self.hidden.shape[0])

    def _map(self, fn) -> Conditioning:
        return Conditioning(fn(self.hidden), *(None if x is None else fn(x) for x in (self.pooled, self.time_ids)))

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Conditioning:
        return self._map(lambda x: x.to(device, dtype) if dtype is not None else x.to(device))

    def repeat(self, n: int) -> Conditioning:
        """A one-row conditioning (e.g. the empty prompt's) for n rows: a view, no copy."""
        if len(self) != 1:
            raise ConfigError("conditioning", f"only a single row can be repeated, this has {len(self)}")
        return self._map(lambda x: x.expand(n, *x.shape[1:]))

    @staticmethod
    def cat(parts: Sequence[Conditioning | torch.Tensor]) -> Conditioning:
        conds = [Conditioning.of(p) for p in parts]
        if len({c.added for c in conds}) > 1:
            raise ConfigError("conditioning", "cannot batch SDXL conditioning with SD conditioning")
        if not conds[0].added:
            return Conditioning(torch.cat([c.hidden for c in conds]))
        return Conditioning(torch.cat([c.hidden for c in conds]), torch.cat([c.pooled for c in conds]),  # type: ignore[misc]
                            torch.cat([c.time_ids for c in conds]))  # type: ignore[misc]

    def unet_kwargs(self, dtype: torch.dtype | None = None) -> dict:
        """Keyword arguments of `UNet2DConditionModel.__call__` for this conditioning."""
        cast = (lambda x: x.to(dtype)) if dtype is not None else (lambda x: x)
        kw: dict = {"encoder_hidden_states": cast(self.hidden)}
        if self.added:
            kw["added_cond_kwargs"] = {"text_embeds": cast(self.pooled), "time_ids": cast(self.time_ids)}
        return kw
