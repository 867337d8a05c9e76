"""GPU benchmark: our sampling, fusion and trajectory DPO against reference-like paths, same run.

    python bench/gpu.py --out results.json            # SD 2.1-base sizes, random weights, fp16, CUDA
    python bench/gpu.py --tiny --steps 4              # CPU smoke test of the script itself

Reference-like paths follow the authors' code: classic (materialised) attention, batch 2, and for
fusion three sequential UNet passes per step (base, reference, target). Ours: SDPA, fixed large
batches, reference + target in one batched call, optionally a compiled channels_last UNet.
Prints a table and writes JSON; numbers go into bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from transformers import CLIPTextConfig, CLIPTextModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dfusion_core import pipeline  # noqa: E402
from dfusion_core.config import FusionConfig, SamplingConfig, TrainingConfig  # noqa: E402
from dfusion_core.items import map_items  # noqa: E402
from dfusion_core.models import SD_SCHEDULER_CONFIG, DiffusionModel, build_tiny, load_tokenizer  # noqa: E402
from dfusion_core.training import Trainer, TrainPair  # noqa: E402

SD21_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=[320, 640, 1280, 1280],
    down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    attention_head_dim=[5, 10, 20, 20], cross_attention_dim=1024, use_linear_projection=True,
)
SD21_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
    block_out_channels=[128, 256, 512, 512],
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
)
SD21_TEXT = dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                 num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", projection_dim=512)
PROMPT = "a cat eating a sandwich"
ITEMS = (["cat", "sandwich"], [0.03, 0.005])


def sd21_model(device: torch.device, dtype: torch.dtype) -> DiffusionModel:
    """SD 2.1-base sizes with random weights, built on the device (fast init, no download)."""
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**SD21_UNET)
        vae = AutoencoderKL(**SD21_VAE)
        text = CLIPTextModel(CLIPTextConfig(**SD21_TEXT))
    for m in (unet, vae, text):
        m.to(dtype=dtype).eval().requires_grad_(False)
    return DiffusionModel(unet, vae, text, load_tokenizer(), DDIMScheduler(**SD_SCHEDULER_CONFIG),
                          "sd21-random", device, dtype)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, reps: int, warmup: int = 1) -> float:
    """Median wall seconds of `reps` runs after `warmup` runs (device synchronised)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def sampling(model: DiffusionModel, batch: int, steps: int, classic: bool, reps: int) -> dict:
    model.unet.set_attn_processor(AttnProcessor() if classic else AttnProcessor2_0())
    cfg = SamplingConfig(num_steps=steps, batch_size=batch)
    t = timed(lambda: pipeline.sample(model, [PROMPT] * batch, cfg, seeds=list(range(batch))), model.device, reps)
    return {"batch": batch, "seconds": t, "images_per_s": batch / t}


def fusion(model: DiffusionModel, pairs: int, steps: int, reference_like: bool, reps: int) -> dict:
    model.unet.set_attn_processor(AttnProcessor() if reference_like else AttnProcessor2_0())
    cfg = SamplingConfig(num_steps=steps, batch_size=2 * pairs)
    trajs = pipeline.sample(model, [PROMPT] * 2 * pairs, cfg, seeds=list(range(2 * pairs)), decode=False)
    refs, bases = trajs[:pairs], trajs[pairs:]
    items = [map_items(model.tokenizer, PROMPT, *ITEMS)] * pairs
    fcfg = FusionConfig(mask_resolution=model.latent_size // 4)
    base_cfg = SamplingConfig(num_steps=steps, batch_size=pairs)

    def run() -> None:
        pipeline.fuse_pairs(model, refs, bases, items, fcfg, sequential=reference_like,
                            classic_attention=reference_like)
        if reference_like:  # the authors' third, redundant pass: the base replayed without fusion
            model.unet.set_attn_processor(AttnProcessor())
            pipeline.sample(model, [PROMPT] * pairs, base_cfg, seeds=list(range(pairs)), decode=False)

    t = timed(run, model.device, reps)
    return {"pairs": pairs, "seconds": t, "pairs_per_s": pairs / t}


def dpo(model: DiffusionModel, pairs: int, steps: int, reps: int, mixed: str) -> dict:
    model.unet.set_attn_processor(AttnProcessor2_0())
    cfg = SamplingConfig(num_steps=steps, batch_size=2 * pairs)
    trajs = pipeline.sample(model, [PROMPT] * 2 * pairs, cfg, seeds=list(range(2 * pairs)), decode=False)
    train_pairs = [TrainPair(trajs[k], trajs[pairs + k]) for k in range(pairs)]
    trainer = Trainer(model, TrainingConfig(batch_pairs=pairs, mixed_precision=mixed), seed=0)
    if model.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(model.device)
    t = timed(lambda: trainer.train_step(train_pairs), model.device, reps)
    peak = torch.cuda.max_memory_allocated(model.device) / 2**30 if model.device.type == "cuda" else None
    from dfusion_core.lora import ADAPTER

    model.unet.delete_adapters(ADAPTER)
    model.unet.requires_grad_(False)
    return {"pairs": pairs, "steps": steps, "seconds": t, "pairs_per_s": pairs / t, "peak_gib": peak}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny model on CPU (checks the script, not speed)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=16, help="our sampling batch")
    ap.add_argument("--pairs", default="8", help="our fusion batches (pairs), comma-separated")
    ap.add_argument("--dpo-pairs", default="2", help="pairs per trajectory-DPO step, comma-separated")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="also time a compiled channels_last UNet")
    ap.add_argument("--out", type=Path, default=Path("bench-gpu.json"))
    args = ap.parse_args()

    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    model = build_tiny(device, dtype) if args.tiny else sd21_model(device, dtype)
    torch.backends.cuda.matmul.allow_tf32 = True
    res: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
                 "date": date.today().isoformat(), "torch": torch.__version__, "dtype": str(dtype),
                 "steps": args.steps, "model": model.name}

    def step(name: str) -> None:  # progress, and the partial results so far survive a crash
        args.out.write_text(json.dumps(res, indent=2))
        print(f"... {name}", file=sys.stderr, flush=True)

    step("sampling, reference-like")
    res["sampling_reference_like"] = sampling(model, 2, args.steps, True, args.reps)
    step("sampling, ours")
    res["sampling_ours"] = sampling(model, args.batch, args.steps, False, args.reps)
    step("fusion, reference-like")
    res["fusion_reference_like"] = fusion(model, 2, args.steps, True, args.reps)
    runs = [fusion(model, int(p), args.steps, False, args.reps) for p in args.pairs.split(",")]
    res["fusion_ours_all"] = runs
    res["fusion_ours"] = max(runs, key=lambda r: r["pairs_per_s"])
    step("trajectory DPO")
    runs = [dpo(model, int(p), args.steps, args.reps, "fp16" if device.type == "cuda" else "no")
            for p in args.dpo_pairs.split(",")]
    res["dpo_all"] = runs
    res["dpo"] = max(runs, key=lambda r: r["pairs_per_s"])
    if args.compile:
        step("compiling the UNet (channels_last)")
        model.unet.to(memory_format=torch.channels_last)
        model.vae.to(memory_format=torch.channels_last)
        eager = model.unet
        model.unet = torch.compile(eager)  # type: ignore[assignment]
        t0 = time.perf_counter()
        try:
            res["sampling_ours_compiled"] = sampling(model, args.batch, args.steps, False, args.reps)
            res["sampling_ours_compiled"]["compile_and_warmup_s"] = time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001 - report, keep the eager numbers
            res["compile_error"] = f"{type(exc).__name__}: {exc}"[:500]
        model.unet = eager
    best = max(res.get("sampling_ours_compiled", {}).get("images_per_s", 0), res["sampling_ours"]["images_per_s"])
    res["sampling_speedup"] = best / res["sampling_reference_like"]["images_per_s"]
    res["fusion_speedup"] = res["fusion_ours"]["pairs_per_s"] / res["fusion_reference_like"]["pairs_per_s"]
    args.out.write_text(json.dumps(res, indent=2))
    print(f"\ndevice: {res['device']}  dtype {dtype}  {args.steps} steps  torch {torch.__version__}")
    print(f"{'path':<34}{'batch':>6}{'seconds':>10}{'per second':>12}")
    rows = [("sampling_reference_like", res["sampling_reference_like"], "images_per_s"),
            ("sampling_ours", res["sampling_ours"], "images_per_s")]
    if "sampling_ours_compiled" in res:
        rows.append(("sampling_ours_compiled", res["sampling_ours_compiled"], "images_per_s"))
    rows.append(("fusion_reference_like", res["fusion_reference_like"], "pairs_per_s"))
    rows += [("fusion_ours", r, "pairs_per_s") for r in res["fusion_ours_all"]]
    rows += [("trajectory_dpo (20 steps)", r, "pairs_per_s") for r in res["dpo_all"]]
    for name, r, unit in rows:
        print(f"{name:<34}{r.get('batch', r.get('pairs')):>6}{r['seconds']:>10.3f}{r[unit]:>12.2f} {unit}")
    print(f"sampling speed-up: {res['sampling_speedup']:.1f}x")
    print(f"fusion speed-up: {res['fusion_speedup']:.1f}x")
    if res["dpo"]["peak_gib"] is not None:
        print(f"trajectory DPO peak memory: {res['dpo']['peak_gib']:.1f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
