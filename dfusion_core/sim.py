"""The `sim` model and scorer: stand-ins that measure the system (queue, state, object store,
fan-in), not the maths.

`SimDenoiser` is a bare one-block DiT over 4x4 tokens whose block has a self-attention `attn1`
and a cross-attention `attn2` (diffusers `Attention`, named as in PixArt-alpha and the toy DiT),
that waits `SimTiming.denoiser_s` seconds after each call, with `time.sleep`: a stand-in for a GPU
kernel that leaves the CPU free. Its outputs are real (correct shapes, finite, trainable), so a sim
job goes through sampling, fusion (the processors find its layers as they find the toy's) and
LoRA training like any other; only the time is simulated. Its images are 16x16 noise. `SimScorer`
waits `SimTiming.scorer_s` per call and scores an image by its mean brightness: deterministic,
cheap, and different between samples, so pairs have an order and some survive the pair filter.

Many worker processes can then share two cores (each spends about 1 ms of CPU a denoiser call on
its tiny tensors, against the 60 ms it waits): what the clock measures is the waits plus the
coordination between them. (Threads in one worker would not add slots: a worker runs its model
under one lock, workers/runtime.py.)

The waits are per process: `set_default_timing` (workers call it with `Settings.sim_denoiser_ms`
and `sim_scorer_ms`, environment `DFUSION_SIM_DENOISER_MS` / `DFUSION_SIM_SCORER_MS`) sets what
models and scorers built afterwards by name wait (the embedded runner, `dfusion run --model sim`,
keeps the defaults: 60 ms and 20 ms); `build_sim(timing=...)` overrides it for one.
Built by name as the `sim` model and scorer (dfusion_core/registry.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.attention import AttentionMixin
from diffusers.models.attention_processor import Attention
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from transformers import CLIPTextConfig

from dfusion_core.errors import ConfigError
from dfusion_core.models import SD_SCHEDULER_CONFIG, DiffusionModel, assemble, load_tokenizer
from dfusion_core.toy.model import PixelVAE, ToyTextEncoder

SIM = "sim"
SIM_SEED = 0
LATENT_FACTOR = 2
LATENT_CHANNELS = 3 * LATENT_FACTOR**2

#: 1 block of width 16 over 4x4 tokens (2x2 patches of the 8x8 latent; images are 16x16): the
#: least that still has a self- and a cross-attention for fusion and LoRA.
SIM_DIT_CONFIG: dict = {
    "sample_size": 8,
    "in_channels": LATENT_CHANNELS,
    "patch_size": 2,
    "width": 16,
    "num_attention_heads": 2,
    "attention_head_dim": 8,
    "cross_attention_dim": 16,  # the caption's width (SIM_TEXT_CONFIG hidden_size)
    "num_train_timesteps": 1000,  # the scheduler's (SD_SCHEDULER_CONFIG): one embedding row each
}

#: The caption as its words (ToyTextEncoder: embeddings only, padding rows zero).
SIM_TEXT_CONFIG: dict = {
    "vocab_size": 49408,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 0,
    "num_attention_heads": 2,
    "max_position_embeddings": 77,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
}


@dataclass(frozen=True)
class SimTiming:
    """What the sim model's calls cost, in seconds of wall time that use no CPU."""

    denoiser_s: float = 0.060  # each denoiser call (one batched UNet forward), >= 0; 60 ms ~ SD 2.1 on a GPU
    scorer_s: float = 0.020  # each scorer call (one batch of images), >= 0

    def __post_init__(self) -> None:
        for name in ("denoiser_s", "scorer_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0.0 <= value <= 60.0):
                raise ConfigError(name, f"a sim wait must be 0..60 seconds, got {value!r}")


_default = SimTiming()
_waits = {"denoiser": 0, "scorer": 0}  # calls that waited, in this process (wait_counts)
_waits_lock = threading.Lock()


def _wait(kind: str, seconds: float) -> None:
    with _waits_lock:
        _waits[kind] += 1
    if seconds > 0:
        time.sleep(seconds)


def wait_counts() -> dict[str, int]:
    """How many denoiser and scorer calls of sim models have waited in this process so far: the
    ideal time of a run is the sum of count x wait (a bench's per-slot rate, a test's lower bound)."""
    with _waits_lock:
        return dict(_waits)


def set_default_timing(timing: SimTiming) -> None:
    """The waits of sim models and scorers built by name from now on, in this process."""
    global _default
    if not isinstance(timing, SimTiming):
        raise ConfigError("timing", f"expected a SimTiming, got {type(timing).__name__}")
    _default = timing


def default_timing() -> SimTiming:
    return _default


class SimBlock(torch.nn.Module):
    """A self-attention `attn1` and a cross-attention `attn2` (diffusers `Attention`, so fusion's
    processors and LoRA's `to_q/to_k/to_v/to_out.0` find them as in PixArt), each residual.

    The processors are called directly: `Attention.forward` only adds a check of unused keyword
    arguments (an `inspect.signature` per call), and the sim passes none."""

    def __init__(self, width: int, heads: int, head_dim: int, cross_dim: int) -> None:
        super().__init__()
        self.attn1 = Attention(width, heads=heads, dim_head=head_dim, bias=True)
        self.attn2 = Attention(width, cross_attention_dim=cross_dim, heads=heads, dim_head=head_dim, bias=True)

    def forward(self, h: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = h + self.attn1.processor(self.attn1, h)
        return h + self.attn2.processor(self.attn2, h, encoder_hidden_states=context, attention_mask=mask)


class SimDenoiser(ModelMixin, ConfigMixin, AttentionMixin, PeftAdapterMixin):
    """A one-block DiT at its barest, called as dfusion calls a UNet (`model(sample, timestep,
    encoder_hidden_states=...).sample`), that waits `wait_s` seconds (time.sleep: no CPU) after each
    forward: patches in (a linear), a learnt position and timestep embedding, `transformer_blocks.0`
    (SimBlock), patches out (a linear). It stands in for a GPU kernel, so what it costs the CPU is
    kept small: PixArt's adaLN, caption projection, feed-forward and norms (ToyDiT) cost some 3x as
    much a call, and the bench measures the system around the model, not the model."""

    wait_s: float = 0.0

    @register_to_config
    def __init__(self, sample_size: int = 8, in_channels: int = LATENT_CHANNELS, patch_size: int = 2,
                 width: int = 16, num_attention_heads: int = 2, attention_head_dim: int = 8,
                 cross_attention_dim: int = 16, num_train_timesteps: int = 1000) -> None:
        super().__init__()
        patch, tokens = in_channels * patch_size**2, (sample_size // patch_size) ** 2
        self.proj_in = torch.nn.Linear(patch, width)
        self.pos_embed = torch.nn.Parameter(torch.randn(1, tokens, width) * 0.02)
        self.time_embed = torch.nn.Embedding(num_train_timesteps, width)
        self.transformer_blocks = torch.nn.ModuleList(
            [SimBlock(width, num_attention_heads, attention_head_dim, cross_attention_dim)])
        self.proj_out = torch.nn.Linear(width, patch)
        self._caption_mask: tuple[torch.Tensor, int, torch.dtype, torch.Tensor] | None = None

    def caption_mask(self, context: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The attention bias [B * heads, 1, S] that hides the caption's padding rows (the sim's text
        encoder zeroes them; PixArt attends only to the real ones), repeated per head as
        `Attention.prepare_attention_mask` would. Sampling and fusion condition every step on the same
        embeddings, so it is made once for them: kept while `context` is the same, unchanged tensor."""
        cached = self._caption_mask
        if cached is not None and cached[0] is context and cached[1] == context._version and cached[2] == dtype:
            return cached[3]
        pad = context.abs().amax(dim=-1, keepdim=True).eq(0).transpose(1, 2)  # [B, 1, S]
        heads = int(self.config.num_attention_heads)
        mask = (pad.to(dtype) * -10000.0).repeat_interleave(heads, dim=0, output_size=pad.shape[0] * heads)
        self._caption_mask = (context, context._version, dtype, mask)
        return mask

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | int,
                encoder_hidden_states: torch.Tensor, return_dict: bool = True, **unused: Any) -> Any:
        b, side = sample.shape[0], sample.shape[-1]
        p = int(self.config.patch_size)
        h = self.proj_in(F.pixel_unshuffle(sample, p).flatten(2).transpose(1, 2)) + self.pos_embed
        t = torch.as_tensor(timestep, device=sample.device).long().expand(b)
        h = h + self.time_embed(t)[:, None]
        mask = self.caption_mask(encoder_hidden_states, h.dtype)
        for block in self.transformer_blocks:
            h = block(h, encoder_hidden_states, mask)
        out = F.pixel_shuffle(self.proj_out(h).transpose(1, 2).reshape(b, -1, side // p, side // p), p)
        _wait("denoiser", self.wait_s)
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)


def build_sim(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
              timing: SimTiming | None = None) -> DiffusionModel:
    """The sim model: random weights from the configs under a fixed seed (forked RNG), real CLIP
    tokenisation, an exact pixel "VAE"; its denoiser waits `timing.denoiser_s` (None = the default)."""
    timing = timing or _default
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SIM_SEED)
        unet = SimDenoiser(**SIM_DIT_CONFIG)
        text = ToyTextEncoder(CLIPTextConfig(**SIM_TEXT_CONFIG))
    unet.wait_s = float(timing.denoiser_s)
    vae: Any = PixelVAE(factor=LATENT_FACTOR, block_out_channels=(LATENT_CHANNELS,) * LATENT_FACTOR.bit_length())
    return assemble(unet, vae, text, load_tokenizer(), DDIMScheduler(**SD_SCHEDULER_CONFIG), SIM, device, dtype)


class SimScorer:
    """Waits `wait_s` seconds per call, then scores each image by its mean brightness in [0, 1]."""

    def __init__(self, wait_s: float) -> None:
        self.wait_s = float(wait_s)

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """images uint8 [B, H, W, 3], B prompts -> scores float32 [B] on the CPU."""
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != torch.uint8:
            raise ConfigError("images", f"expected uint8 [B, H, W, 3], got {images.dtype} {tuple(images.shape)}")
        if len(prompts) != images.shape[0]:
            raise ConfigError("prompts", f"{len(prompts)} prompts for {images.shape[0]} images")
        _wait("scorer", self.wait_s)
        return images.cpu().float().mean(dim=(1, 2, 3)).div(255.0)


def build_sim_scorer(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                     timing: SimTiming | None = None) -> SimScorer:
    """The sim scorer (on the CPU; device and dtype are ignored)."""
    return SimScorer((timing or _default).scorer_s)
