"""The models and scorers dfusion builds by name: one explicit table each.

| name   | model                                        | scorer                                      |
|--------|----------------------------------------------|---------------------------------------------|
| `tiny` | random weights from configs (`models`)       | random tiny CLIP (`scoring`)                |
| `tiny-sdxl` | random SDXL-layout weights from configs (`sdxl`) | (use `tiny`)                    |
| `toy`  | the shipped, trained toy model (`toy.model`) | the exact toy-world scorer (`toy.scorer`)   |
| `sim`  | a tiny denoiser that waits like a GPU kernel (`sim`) | waits, then scores brightness (`sim`) |

Anything else is a local folder or a Hugging Face Hub id (`owner/name`, resolved through the HF
cache, `dfusion_core.hub`): a diffusers SD 1.x / 2.x or SDXL pipeline for models; a transformers CLIP model
(or `openclip:<arch>:<weights>`) for scorers. Each builder imports its module when called, so this
module loads no torch and the API can list the names (`MODELS`, `SCORERS`) without it. Plug-in
scorers are added with `register_scorer`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dfusion_core.errors import ConfigError
from dfusion_core.hub import HubOptions, is_hub_id

if TYPE_CHECKING:
    import torch

    from dfusion_core.models import DiffusionModel
    from dfusion_core.scoring import Scorer

@dataclass(frozen=True)
class ModelRef:
    """A model as a job names it: a name in `MODELS`, a registered name, a folder or a Hub id, and for
    those the revision (Hub ids) and weights variant (e.g. "fp16"). Hashable: a worker keys its models by it."""

    name: str
    revision: str | None = None
    variant: str | None = None


#: `(device, dtype) -> DiffusionModel` and `(device, dtype) -> Scorer`.
ModelBuilder = Callable[[Any, Any], "DiffusionModel"]
ScorerFactory = Callable[[Any, Any], "Scorer"]


def _tiny_model(device: torch.device | str, dtype: torch.dtype) -> DiffusionModel:
    from dfusion_core.models import build_tiny

    return build_tiny(device, dtype)


def _tiny_sdxl_model(device: torch.device | str, dtype: torch.dtype) -> DiffusionModel:
    from dfusion_core.sdxl import build_tiny_sdxl

    return build_tiny_sdxl(device, dtype)


def _toy_model(device: torch.device | str, dtype: torch.dtype) -> DiffusionModel:
    from dfusion_core.toy.model import load_toy

    return load_toy(device, dtype)


def _sim_model(device: torch.device | str, dtype: torch.dtype) -> DiffusionModel:
    from dfusion_core.sim import build_sim

    return build_sim(device, dtype)


def _tiny_scorer(device: torch.device | str, dtype: torch.dtype) -> Scorer:
    from dfusion_core.scoring import build_tiny_scorer

    return build_tiny_scorer(device, dtype)


def _toy_scorer(device: torch.device | str, dtype: torch.dtype) -> Scorer:
    from dfusion_core.toy.scorer import build_toy_scorer

    return build_toy_scorer(device, dtype)


def _sim_scorer(device: torch.device | str, dtype: torch.dtype) -> Scorer:
    from dfusion_core.sim import build_sim_scorer

    return build_sim_scorer(device, dtype)


MODELS: dict[str, ModelBuilder] = {"tiny": _tiny_model, "tiny-sdxl": _tiny_sdxl_model, "toy": _toy_model,
                                   "sim": _sim_model}
SCORERS: dict[str, ScorerFactory] = {"tiny": _tiny_scorer, "toy": _toy_scorer, "sim": _sim_scorer}


def register_scorer(name: str) -> Callable[[ScorerFactory], ScorerFactory]:
    """Decorator: make `build_scorer(name)` call the factory `(device, dtype) -> Scorer`."""
    def deco(factory: ScorerFactory) -> ScorerFactory:
        if name in SCORERS:
            raise ConfigError("scorer", f"a scorer named {name!r} is already registered")
        SCORERS[name] = factory
        return factory
    return deco


def available_models() -> list[str]:
    return sorted(MODELS)


def available_scorers() -> list[str]:
    return sorted(SCORERS)


def load_model(
    name_or_path: str | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    *,
    revision: str | None = None,
    variant: str | None = None,
    hub: HubOptions | None = None,
) -> DiffusionModel:
    """A name in `MODELS`, a local diffusers folder in SD 1.x / 2.x or SDXL layout, or a Hub id of one
    (`revision`, `variant` and `hub` apply to those). `dtype` None = float32."""
    import torch

    dtype = torch.float32 if dtype is None else dtype
    name = str(name_or_path)
    if name in MODELS:
        return MODELS[name](device, dtype)
    from dfusion_core.models import load_pretrained

    return load_pretrained(name, device, dtype, revision=revision, variant=variant, hub=hub)


def build_scorer(name_or_path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
                 *, hub: HubOptions | None = None) -> Scorer:
    """A name in `SCORERS`, `openclip:<arch>:<weights>`, a local transformers CLIP folder or its Hub id."""
    import torch

    dtype = torch.float32 if dtype is None else dtype
    name = str(name_or_path)
    if name in SCORERS:
        return SCORERS[name](device, dtype)
    from dfusion_core.scoring import ClipScorer, OpenClipScorer

    if name.startswith("openclip:"):
        parts = name.split(":", 2)
        if len(parts) != 3 or not parts[1] or not parts[2]:
            raise ConfigError("scorer", f"write OpenCLIP scorers as 'openclip:<arch>:<weights>', got {name!r}")
        return OpenClipScorer.from_pretrained(parts[1], parts[2], device, dtype)
    if Path(name).is_dir():
        return ClipScorer.from_pretrained(name, device, dtype)
    if is_hub_id(name):
        return ClipScorer.from_hub(name, device, dtype, hub=hub)
    raise ConfigError("scorer", f"unknown scorer {name!r}: use one of {available_scorers()}, "
                      "'openclip:<arch>:<weights>', a local CLIP folder or a Hub id ('owner/name')")
