"""What a worker process keeps resident: models, scorers and the policy version loaded.

Built lazily in the worker process (after Celery's fork), so nothing touches CUDA in the
parent. One model per name per process; tasks of any job switch its LoRA to the version
they need, and the switch is skipped when that version is already loaded.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from dfusion_core.errors import ConfigError
from dfusion_core.hub import HubOptions, is_hub_id
from dfusion_core.lora import ADAPTER, has_lora, load_lora_bytes
from dfusion_core.models import DiffusionModel
from dfusion_core.registry import MODELS, ModelRef, build_scorer, load_model
from dfusion_core.storage import BlobStore
from workers import keys

log = logging.getLogger(__name__)

def configure_sim(denoiser_ms: float, scorer_ms: float) -> None:
    """The waits of the `sim` model and scorer this process builds (Settings.sim_denoiser_ms, sim_scorer_ms)."""
    from dfusion_core.sim import SimTiming, set_default_timing

    set_default_timing(SimTiming(denoiser_s=denoiser_ms / 1000.0, scorer_s=scorer_ms / 1000.0))


def pick_device(device: str | None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class Runtime:
    """Per-process resources. `models` maps registered names to local diffusers folders; other
    `owner/name` models and scorers are Hub ids, resolved as `hub` says (None = huggingface_hub's
    defaults: HF_HOME, HF_HUB_OFFLINE)."""

    models: dict[str, str]
    device: torch.device = field(default_factory=lambda: pick_device(None))
    hub: HubOptions | None = None
    _models: dict[ModelRef, DiffusionModel] = field(default_factory=dict)
    _scorers: dict[str, object] = field(default_factory=dict)
    _loaded: dict[ModelRef, tuple] = field(default_factory=dict)  # model -> tag of the weights in it
    lock: threading.RLock = field(default_factory=threading.RLock)

    @property
    def dtype(self) -> torch.dtype:
        return torch.float16 if self.device.type == "cuda" else torch.float32

    def model(self, ref: ModelRef | str) -> DiffusionModel:
        """The model, loaded on first use in this process and kept."""
        ref = ModelRef(ref) if isinstance(ref, str) else ref
        with self.lock:
            if ref not in self._models:
                name = ref.name
                if name not in MODELS and name not in self.models and not is_hub_id(name):
                    raise ConfigError("model", f"unknown model {name!r}; built in: {', '.join(MODELS)}; "
                                      f"registered: {', '.join(self.models) or 'none'}; or a Hub id ('owner/name')")
                log.info("loading model %s on %s", ref, self.device)
                self._models[ref] = load_model(self.models.get(name, name), self.device, self.dtype,
                                               revision=ref.revision, variant=ref.variant, hub=self.hub)
            return self._models[ref]

    def scorer(self, name: str):
        with self.lock:
            if name not in self._scorers:
                self._scorers[name] = build_scorer(name, device=self.device, hub=self.hub)
            return self._scorers[name]

    def policy(self, ref: ModelRef | str, store: BlobStore, job_id: str, version: int) -> DiffusionModel:
        """The model with job `job_id`'s policy `version` (0 = the base model, no adapter)."""
        ref = ModelRef(ref) if isinstance(ref, str) else ref
        model = self.model(ref)
        tag = ("policy", job_id, version)
        if self._loaded.get(ref) == tag:
            return model
        self._loaded.pop(ref, None)  # until the new weights are in: a failed load must not leave the old tag
        if version == 0:
            if has_lora(model.unet):
                model.unet.delete_adapters(ADAPTER)
        else:
            if has_lora(model.unet):
                model.unet.delete_adapters(ADAPTER)  # the rank may differ between jobs
            load_lora_bytes(model.unet, store.get(keys.checkpoint_key(job_id, version)))
            model.unet.requires_grad_(False)
        self._loaded[ref] = tag
        return model

    def mark_modified(self, ref: ModelRef | str, tag: tuple) -> None:
        """The trainer changed the weights in place: the next policy() call must reload."""
        self._loaded[ModelRef(ref) if isinstance(ref, str) else ref] = tag

    def run_locked(self, fn: Callable[[], object]) -> object:
        with self.lock:
            return fn()
