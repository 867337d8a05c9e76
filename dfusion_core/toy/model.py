"""The toy world's model: pixel-space diffusion behind an exact, weightless "autoencoder".

`ToyDiT`, a PixArt-alpha transformer (diffusers' `PixArtTransformer2DModel`: self-attention `attn1`
and cross-attention `attn2` in every block, over 8x8 patch tokens at one resolution), on the 32x32x3
image folded space-to-depth into 12x16x16, and a small CLIP text encoder (`ToyTextEncoder`) on the shipped CLIP BPE,
behind `PixelVAE` (pixel_unshuffle / pixel_shuffle), so the rest of dfusion, which decodes latents
through `model.vae`, needs no change. No convolution sees more than its own 4x4-pixel patch, so
where things are is decided by self-attention alone: what D-Fusion's fusion acts on. (The earlier
toy UNet carried layout in its convolutions, and fusion barely moved its images: bench/RESULTS.md.) `build_toy` gives
untrained weights from the configs; `load_toy` reads the shipped, trained weights
(assets/toy/*.safetensors, stored in fp16), trained by scripts/train_toy.py. Built by name as the
`toy` model (dfusion_core/registry.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from diffusers import DDIMScheduler, PixArtTransformer2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.modeling_utils import ModelMixin
from transformers import CLIPTextConfig, CLIPTextModel

from dfusion_core.errors import ConfigError
from dfusion_core.models import SD_SCHEDULER_CONFIG, DiffusionModel, assemble, load_tokenizer
from dfusion_core.toy.world import IMAGE_SIZE, TOY


class PixelVAE(ModelMixin, ConfigMixin):
    """An exact, weightless "autoencoder": space-to-depth by `factor` (pixel_unshuffle).

    Latents [B, 3*f*f, S/f, S/f] are the image in [-1, 1], rearranged; decode is pixel_shuffle,
    so the model is pixel-space diffusion at 1/f the spatial cost. Provides what dfusion reads
    from `model.vae`: `config.scaling_factor`, `config.block_out_channels` (its length gives the
    scale factor f = 2**(len-1)), `decode(z).sample`, and `encode(x)` for data.
    """

    @register_to_config
    def __init__(self, factor: int = 2, scaling_factor: float = 1.0, block_out_channels: tuple[int, ...] = (12, 12)):
        super().__init__()
        if 2 ** (len(block_out_channels) - 1) != factor:
            raise ConfigError("vae", f"block_out_channels {block_out_channels} do not give the factor {factor}")
        # one frozen scalar so .to(device/dtype) and next(parameters()) behave as for any module
        self.anchor = torch.nn.Parameter(torch.zeros(()), requires_grad=False)

    @dataclass
    class Output:
        sample: torch.Tensor

    def encode_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, S, S] in [-1, 1] -> latents [B, 3*f*f, S/f, S/f]."""
        return torch.nn.functional.pixel_unshuffle(x, self.config.factor)

    def decode(self, z: torch.Tensor, return_dict: bool = True) -> Any:
        x = torch.nn.functional.pixel_shuffle(z, self.config.factor)
        return PixelVAE.Output(x) if return_dict else (x,)

    def forward(self, x: torch.Tensor) -> Any:
        return self.decode(self.encode_pixels(x))


LATENT_FACTOR = 2
LATENT_CHANNELS = 3 * LATENT_FACTOR**2

#: 8 blocks of width 128 over 8x8 tokens (2x2 patches of the 16x16 latent, 4x4 image pixels each):
#: 2.3 M parameters, ~0.5 s a training step of 64 scenes on 2 CPU cores (scripts/train_toy.py).
TOY_DIT_CONFIG: dict = {
    "sample_size": IMAGE_SIZE // LATENT_FACTOR,
    "in_channels": LATENT_CHANNELS,
    "out_channels": LATENT_CHANNELS,  # epsilon only, no learned variance
    "patch_size": 2,
    "num_layers": 8,
    "num_attention_heads": 4,
    "attention_head_dim": 32,
    "cross_attention_dim": 128,  # captions are projected to the model width (caption_channels -> 128)
    "caption_channels": 64,
    "norm_num_groups": 1,
}


class ToyDiT(PixArtTransformer2DModel, PeftAdapterMixin):
    """PixArt-alpha's transformer, called the way dfusion calls a UNet:
    `model(sample, timestep, encoder_hidden_states=...).sample`.

    The layout dfusion reads (blocks.attention_blocks) is `transformer_blocks.{i}`, each with a
    self-attention `attn1` and a cross-attention `attn2`, as in PixArt-alpha/Sigma checkpoints.
    """

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | int,
        encoder_hidden_states: torch.Tensor | None = None,
        added_cond_kwargs: dict | None = None,
        return_dict: bool = True,
        **kwargs: Any,
    ) -> Any:
        t = torch.as_tensor(timestep, device=sample.device)
        if t.ndim == 0:
            t = t.expand(sample.shape[0])
        # no resolution / aspect-ratio embedding at this size (PixArt uses it only at 1024 px)
        extra = added_cond_kwargs or {"resolution": None, "aspect_ratio": None}
        if encoder_hidden_states is not None and kwargs.get("encoder_attention_mask") is None:
            # PixArt attends only to the caption's real tokens (its T5 attention mask). ToyTextEncoder
            # zeroes the padding rows, so they are found here wherever the conditioning comes from.
            kwargs["encoder_attention_mask"] = (encoder_hidden_states.abs().amax(dim=-1) > 0).to(sample.dtype)
        return super().forward(sample, encoder_hidden_states=encoder_hidden_states, timestep=t,
                               added_cond_kwargs=extra, return_dict=return_dict, **kwargs)


class WordContext(torch.nn.Module):
    """One bidirectional pre-norm transformer layer over a caption's word rows, as T5 gives PixArt
    its rows: each row stays its word (a residual) and gains what the rest of the caption says of it.

    Why: with words alone, which shape (now pattern) goes with which colour and which colour goes on
    which side are two-hop questions for the DiT (find the colour, then the word at the slot beside
    it, or the relation word). 14,000 steps taught the toy DiT both colours and the relation's axis
    but neither shapes nor sides (bench/RESULTS.md). With context, the "red" row of "a red striped
    square above a blue dotted square" says striped and upper, so one cross-attention answers both.
    The output projections start at zero: a new layer is the identity, and weights trained without
    it load unchanged.
    """

    def __init__(self, width: int, heads: int, hidden: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = torch.nn.LayerNorm(width), torch.nn.LayerNorm(width)
        self.qkv, self.out = torch.nn.Linear(width, 3 * width), torch.nn.Linear(width, width)
        self.fc1, self.fc2 = torch.nn.Linear(width, hidden), torch.nn.Linear(hidden, width)
        for layer in (self.out, self.fc2):
            torch.nn.init.zeros_(layer.weight)
            torch.nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        attend = keep[:, None, None, :]  # rows attend only to the caption's own rows
        mixed = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attend)
        x = x + self.out(mixed.transpose(1, 2).reshape(b, n, w))
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm2(x))))


class ToyTextEncoder(CLIPTextModel):
    """The caption as its words: CLIP's token and position embeddings with no causal transformer layer
    over them (TOY_TEXT_CONFIG has none), optionally `context_layers` bidirectional `WordContext`
    layers over the caption's own rows, and every row after the first end-of-text token zero.

    Why no causal layer: through causal attention every later row of a CLIP encoder trained along
    with the denoiser holds the whole caption, and the padding rows repeat it; the DiT need not
    attend to any word, and the item masks D-Fusion builds from its cross-attention covered the
    objects worse than a full mask (IoU 0.10-0.15 against 0.23, at 4,350 training steps). With words
    alone, a cell learns what to draw by attending to its object's words: the colour words' maps found
    the objects (IoU 0.41-0.44 against 0.27 for a full mask, 800 steps after the switch). Zero rows
    are padding to ToyDiT, which masks them as PixArt masks T5's padding.
    """

    def __init__(self, config: CLIPTextConfig):
        super().__init__(config)
        width = config.hidden_size
        self.context = torch.nn.ModuleList(
            WordContext(width, config.num_attention_heads, config.intermediate_size)
            for _ in range(getattr(config, "context_layers", 0)))

    def forward(self, input_ids: torch.Tensor | None = None, *args: Any, **kwargs: Any) -> Any:
        out = super().forward(input_ids, *args, **kwargs)
        if input_ids is not None:
            eos = input_ids.eq(TOY_TEXT_CONFIG["eos_token_id"]).long()
            keep = (eos.cumsum(dim=1) - eos) == 0  # up to and including the first end token
            hidden = out.last_hidden_state
            for layer in self.context:
                hidden = layer(hidden, keep)
            out.last_hidden_state = hidden * keep[..., None].to(hidden.dtype)
        return out


TOY_TEXT_CONFIG: dict = {
    "vocab_size": 49408,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 0,  # no causal layer (ToyTextEncoder)
    "context_layers": 1,  # one bidirectional WordContext layer
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
}


def toy_dir() -> Path:
    return Path(str(resources.files("dfusion_core") / "assets" / "toy"))


def build_toy_modules(seed: int = 0) -> tuple[ToyDiT, ToyTextEncoder]:
    """Untrained denoiser and text encoder from the configs under `seed` (forked RNG)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = ToyDiT(**TOY_DIT_CONFIG)
        text = ToyTextEncoder(CLIPTextConfig(**TOY_TEXT_CONFIG))
    return unet, text


def assemble_toy(
    unet: ToyDiT, text: CLIPTextModel, device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32, name: str = TOY,
) -> DiffusionModel:
    vae: Any = PixelVAE(factor=LATENT_FACTOR, block_out_channels=(LATENT_CHANNELS,) * (LATENT_FACTOR.bit_length()))
    return assemble(unet, vae, text, load_tokenizer(), DDIMScheduler(**SD_SCHEDULER_CONFIG), name, device, dtype)


def build_toy(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0) -> DiffusionModel:
    """The toy architecture with untrained weights (the 'no training at all' baseline)."""
    unet, text = build_toy_modules(seed)
    return assemble_toy(unet, text, device, dtype, name=f"{TOY}-untrained")


def save_toy_weights(unet: torch.nn.Module, text: torch.nn.Module, folder: str | Path, meta: dict | None = None) -> None:
    """unet.safetensors + text_encoder.safetensors (fp16) + meta.json in `folder`."""
    from safetensors.torch import save_file

    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    for name, module in (("unet", unet), ("text_encoder", text)):
        state = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in module.state_dict().items()}
        save_file(state, str(root / f"{name}.safetensors"))
    (root / "meta.json").write_text(json.dumps(meta or {}, indent=2))


def load_toy_modules(
    folder: str | Path | None = None, strict: bool = True
) -> tuple[ToyDiT, ToyTextEncoder]:
    """Toy weights from `folder` (default: the shipped ones). `strict=False` lets weights of a smaller
    architecture seed a grown one (its extra layers keep their fresh init), as scripts/train_toy.py --init does."""
    from safetensors.torch import load_file

    root = Path(folder) if folder is not None else toy_dir()
    if not (root / "unet.safetensors").is_file():
        raise ConfigError("model", f"no toy weights in {root} (train them with scripts/train_toy.py)")
    unet, text = build_toy_modules()
    for name, module in (("unet", unet), ("text_encoder", text)):
        state = {k: v.float() for k, v in load_file(str(root / f"{name}.safetensors")).items()}
        result = module.load_state_dict(state, strict=False)
        # weights from before WordContext lack it: its zero-initialised layer is then the identity
        missing = [k for k in result.missing_keys if not k.startswith("context.")]
        if strict and (missing or result.unexpected_keys):
            raise ConfigError("model", f"toy weights in {root} do not fit {name}: missing {missing}, "
                                       f"unexpected {result.unexpected_keys}")
    return unet, text


def load_toy(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, folder: str | Path | None = None
) -> DiffusionModel:
    """The trained toy model (default: the weights shipped in assets/toy)."""
    unet, text = load_toy_modules(folder)
    return assemble_toy(unet, text, device, dtype)
