"""Prompt-image alignment scorers, pluggable by name (DESIGN §1, "Scoring").

A scorer maps images uint8 [B, H, W, 3] and their prompts to scores float32 [B] (CPU): the
cosine similarity of CLIP's normalised image and text embeddings. Preprocessing (resize the short
side, centre-crop, normalise) runs in torch, so no image processor or torchvision is needed.

- `ClipScorer`: transformers `CLIPModel` from a local folder (`ClipScorer.from_pretrained`).
- `OpenClipScorer`: OpenCLIP (the paper's ViT-H-14, laion2B-s32B-b79K), imported lazily; install
  the `openclip` extra on GPU boxes. Name it as `openclip:<arch>:<weights path>`.
- `build_tiny_scorer`: a random tiny CLIPModel from a config under a fixed seed, with the shipped tokenizer.
Scorers are resolved by name or path in `dfusion_core.registry.build_scorer`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPModel

from dfusion_core.errors import ConfigError
from dfusion_core.hub import HubOptions, HubUnavailable, hub_offline, load_error, unavailable_message
from dfusion_core.models import TINY_TEXT_CONFIG, load_tokenizer

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TINY_SEED = 0
TINY_VISION_CONFIG: dict = {
    "image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
    "num_hidden_layers": 2, "num_attention_heads": 2,
}


@runtime_checkable
class Scorer(Protocol):
    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """images uint8 [B, H, W, 3], B prompts -> scores float32 [B] on the CPU."""
        ...


def preprocess(
    images: torch.Tensor, size: int, mean: Sequence[float], std: Sequence[float], device: torch.device | str,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> normalised [B, 3, size, size]: bicubic resize of the short side, centre crop."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != torch.uint8:
        raise ConfigError("images", f"expected uint8 [B, H, W, 3], got {images.dtype} {tuple(images.shape)}")
    x = images.to(device).permute(0, 3, 1, 2).float() / 255.0
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    top, left = (nh - size) // 2, (nw - size) // 2
    x = x[:, :, top : top + size, left : left + size]
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return ((x - m) / s).to(dtype)


def _check(images: torch.Tensor, prompts: Sequence[str]) -> None:
    if len(prompts) != images.shape[0]:
        raise ConfigError("prompts", f"{len(prompts)} prompts for {images.shape[0]} images")


class ClipScorer:
    """CLIP score with a transformers `CLIPModel`: cos(normalised image emb, normalised text emb)."""

    def __init__(
        self, model: CLIPModel, tokenizer: Any, *, device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD,
        image_size: int | None = None,
    ) -> None:
        module: Any = model  # transformers' wrapped `.to` confuses type checkers
        self.model = module.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.device, self.dtype = torch.device(device), dtype
        self.mean, self.std = tuple(mean), tuple(std)
        config: Any = model.config
        self.image_size = int(image_size or config.vision_config.image_size)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> ClipScorer:
        """A local transformers CLIP folder (config.json + weights; tokenizer files optional,
        else the shipped CLIP BPE; preprocessor_config.json optional, else OpenAI's constants)."""
        root = Path(path)
        if not (root / "config.json").is_file():
            raise ConfigError("scorer", f"{root} is not a transformers CLIP folder (no config.json)")
        model = CLIPModel.from_pretrained(root, local_files_only=True)
        tokenizer = load_tokenizer(root) if (root / "vocab.json").is_file() else load_tokenizer()
        pre: dict[str, Any] = {}
        if (root / "preprocessor_config.json").is_file():
            pre = json.loads((root / "preprocessor_config.json").read_text())
        size = pre.get("crop_size") or pre.get("size")
        if isinstance(size, dict):
            size = size.get("height") or size.get("shortest_edge")
        return cls(model, tokenizer, device=device, dtype=dtype, mean=pre.get("image_mean", CLIP_MEAN),
                   std=pre.get("image_std", CLIP_STD), image_size=size)

    @classmethod
    def from_hub(cls, repo_id: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 *, revision: str | None = None, hub: HubOptions | None = None) -> ClipScorer:
        """A transformers CLIP repo on the Hub, through the Hugging Face cache (its config, tokenizer
        and safetensors weights only), then read as a local folder."""
        from huggingface_hub import snapshot_download

        hub = hub or HubOptions()
        kw: dict[str, Any] = {"revision": revision, "cache_dir": hub.cache_dir,
                              "allow_patterns": ["*.json", "*.txt", "*.safetensors"]}
        if hub.offline is not None:
            kw["local_files_only"] = hub.offline
        try:
            folder = snapshot_download(repo_id, **kw)
        except (OSError, ValueError) as exc:  # huggingface_hub: not cached and offline, no such repo
            why = load_error(exc, repo_id, revision, None, bool(hub.offline) or hub_offline(), hub.cache_dir)
            if isinstance(why, HubUnavailable):  # transient: the task retries, nothing is cached
                raise why from exc
            raise ConfigError("scorer", unavailable_message(repo_id, revision, str(exc).splitlines()[0][:300]
                                                           if str(exc) else type(exc).__name__)) from exc
        return cls.from_pretrained(folder, device, dtype)

    @torch.no_grad()
    def embed_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """Normalised text embeddings [B, D] (float32)."""
        tok = self.tokenizer(list(prompts), padding="max_length", truncation=True,
                             max_length=self.tokenizer.model_max_length, return_tensors="pt")
        out = self.model.text_model(input_ids=tok.input_ids.to(self.device),
                                    attention_mask=tok.attention_mask.to(self.device))
        return F.normalize(self.model.text_projection(out.pooler_output).float(), dim=-1)

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised image embeddings [B, D] (float32) of uint8 [B, H, W, 3] images."""
        px = preprocess(images, self.image_size, self.mean, self.std, self.device, self.dtype)
        out = self.model.vision_model(pixel_values=px)
        return F.normalize(self.model.visual_projection(out.pooler_output).float(), dim=-1)

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        _check(images, prompts)
        return (self.embed_images(images) * self.embed_text(prompts)).sum(-1).cpu()


class OpenClipScorer:
    """CLIP score with OpenCLIP (optional dependency, imported when built)."""

    def __init__(self, model: Any, tokenizer: Any, *, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        self.model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.device, self.dtype = torch.device(device), dtype
        cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
        size = cfg.get("size", getattr(model.visual, "image_size", 224))
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.mean, self.std = tuple(cfg.get("mean", CLIP_MEAN)), tuple(cfg.get("std", CLIP_STD))

    @classmethod
    def from_pretrained(cls, arch: str = "ViT-H-14", pretrained: str | Path = "laion2b_s32b_b79k",
                        device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> OpenClipScorer:
        """`pretrained` is a local weights file (nothing downloads here) or a tag already cached."""
        try:
            import open_clip
        except ImportError as exc:
            raise ConfigError("scorer", "OpenCLIP is not installed: `pip install 'dfusion[openclip]'` "
                              "(needs torchvision), or use a transformers CLIP folder") from exc
        model = open_clip.create_model(arch, pretrained=str(pretrained), device=device)
        return cls(model, open_clip.get_tokenizer(arch), device=device, dtype=dtype)

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        _check(images, prompts)
        px = preprocess(images, self.image_size, self.mean, self.std, self.device, self.dtype)
        img = F.normalize(self.model.encode_image(px).float(), dim=-1)
        txt = F.normalize(self.model.encode_text(self.tokenizer(list(prompts)).to(self.device)).float(), dim=-1)
        return (img * txt).sum(-1).cpu()


def build_tiny_scorer(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> ClipScorer:
    """A random tiny CLIPModel (fixed seed, forked RNG) with the shipped CLIP tokenizer: for tests."""
    config = CLIPConfig(text_config=dict(TINY_TEXT_CONFIG), vision_config=dict(TINY_VISION_CONFIG),
                        projection_dim=16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = CLIPModel(config)
    return ClipScorer(model, load_tokenizer(), device=device, dtype=dtype)
