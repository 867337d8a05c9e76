"""Parity with the authors' code: run this project's fusion on a golden case (golden/README.md)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import DDIMScheduler, UNet2DConditionModel
from safetensors.torch import load_file

from dfusion_core.config import FusionConfig
from dfusion_core.errors import ConfigError
from dfusion_core.fusion import fuse
from dfusion_core.sampling import NoiseStream, cfg_denoiser, rollout

TOLERANCES = {
    "target_latents_max_abs_err": 1e-3,
    "ref_latents_max_abs_err": 1e-3,
    "plain_latents_max_abs_err": 1e-3,
    "target_log_probs_max_abs_err": 1e-4,
    "plain_log_probs_max_abs_err": 1e-4,
}
MIN_MASK_AGREEMENT = 0.995


def fusion_config_from_golden(settings: dict) -> FusionConfig:
    """The authors' [lo, hi) step window counts from the last step; ours from the first."""
    steps = int(settings["num_steps"])
    lo, hi = settings["inject_steps"]
    return FusionConfig(
        blocks=tuple(settings["inject_blocks"]),
        skip_first_steps=steps - int(hi),
        skip_last_steps=int(lo),
        mask_resolution=int(settings["mask_resolution"]),
    )


@torch.no_grad()
def run_golden(case: str | Path) -> dict[str, float]:
    root = Path(case)
    if not (root / "golden.json").is_file():
        raise ConfigError("case", f"{root} has no golden.json")
    settings = json.loads((root / "golden.json").read_text())
    data = load_file(str(root / "golden.safetensors"))
    unet = UNet2DConditionModel(**settings["unet_config"])
    unet.load_state_dict(load_file(str(root / "unet.safetensors")), strict=True)
    unet.eval()
    scheduler = DDIMScheduler(**settings["scheduler_config"])
    scheduler.set_timesteps(int(settings["num_steps"]))
    cond = data["cond_embeds"]
    n = cond.shape[0]
    uncond = data["uncond_embeds"][None].expand(n, -1, -1)
    w, eta = float(settings["guidance_scale"]), float(settings["eta"])
    base_noise = NoiseStream(data["base_init_noise"], data["base_step_noise"])
    ref_noise = NoiseStream(data["ref_init_noise"], data["ref_step_noise"])

    plain = rollout(cfg_denoiser(unet, cond, uncond, w), scheduler, base_noise, eta)
    tokens = [[[int(i) + 1] for i in settings["item_idx"]]] * n  # word index + start token
    thresholds = [[float(t) for t in settings["mask_thr"]]] * n
    fused = fuse(unet, scheduler, cond, uncond, ref_noise, base_noise, tokens, thresholds,
                 fusion_config_from_golden(settings), guidance_scale=w, eta=eta)

    def err(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a.float() - b.float()).abs().max())

    return {
        "target_latents_max_abs_err": err(fused.target_latents, data["target_latents"]),
        "ref_latents_max_abs_err": err(fused.ref_latents, data["ref_latents"]),
        "plain_latents_max_abs_err": err(plain.latents, data["plain_base_latents"]),
        "target_log_probs_max_abs_err": err(fused.target_log_probs, data["target_log_probs"]),
        "plain_log_probs_max_abs_err": err(plain.log_probs, data["plain_base_log_probs"]),
        "mask_agreement": float((fused.masks == data["ref_masks"]).float().mean()),
    }


def within_tolerance(result: dict[str, float]) -> bool:
    return all(result[k] <= tol for k, tol in TOLERANCES.items()) and result["mask_agreement"] >= MIN_MASK_AGREEMENT
