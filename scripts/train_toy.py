"""Train the toy-world text-to-image model (pixel space, 32x32) from scratch.

    python scripts/train_toy.py --steps 4000 --out runs/toy [--resume] [--device cuda]

Each step draws a fresh batch of scenes for training captions (held-out combinations are never
shown), noises them under SD's DDPM schedule and regresses the noise (epsilon prediction);
10% of captions are dropped to "" for classifier-free guidance. UNet and text encoder train
jointly with AdamW; an EMA of the weights is what gets exported.

Resumable: `--out/state.safetensors` holds weights, EMA, AdamW moments and the step; the batch
of step k depends only on (seed, k), so a resumed run continues the same data stream.
`--out/unet.safetensors` + `text_encoder.safetensors` (fp16 EMA, `load_toy(folder=...)`) are
rewritten at every save; copy them to dfusion_core/assets/toy to ship.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from safetensors.torch import load_file, save_file

from dfusion_core import attention
from dfusion_core.items import map_items
from dfusion_core.models import SD_SCHEDULER_CONFIG, load_tokenizer
from dfusion_core.toy import model as toy_model
from dfusion_core.toy import scorer as toy_scorer
from dfusion_core.toy import world as tw

log = logging.getLogger("train_toy")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, required=True, help="total optimizer steps (a resumed run stops here too)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--resume", action="store_true", help="continue from --out/state.safetensors if present")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100, help="linear LR warm-up steps")
    p.add_argument("--ema", type=float, default=0.995, help="EMA decay of the exported weights")
    p.add_argument("--uncond", type=float, default=0.1, help="caption dropout for classifier-free guidance")
    p.add_argument("--min-snr", type=float, default=0.0,
                   help="min-SNR-gamma loss weight min(SNR, gamma)/SNR (Hang et al. 2023); 0 = plain MSE. Moves the "
                        "loss toward the noisy steps where layout and colours are decided")
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--max-minutes", type=float, default=0.0, help="stop (and save) after this wall time; 0 = no limit")
    p.add_argument("--init", type=Path, default=None,
                   help="start from these toy weights (a folder as load_toy reads); layers they lack keep their "
                        "fresh init, so a model grown by new attention layers trains on from the old one")
    p.add_argument("--init-text", type=Path, default=None,
                   help="start only the text encoder from these toy weights (the denoiser starts fresh)")
    p.add_argument("--attn-supervision", type=float, default=0.0, metavar="WEIGHT",
                   help="add WEIGHT x KL(object cells || item map): each item's cross-attention (its colour and "
                        "pattern words, averaged over layers and heads) is pulled toward where its object is, "
                        "weighted by the step's signal level alpha_bar (0 = off). Sharper item maps make sharper "
                        "fusion masks (scripts/toy_fusion_probe.py --oracle-masks measures the bound)")
    p.add_argument("--train-only", choices=["all", "attn2-qk"], default="all",
                   help="'attn2-qk': only the cross-attention query and key projections learn, so the maps change "
                        "and what the model draws changes as little as it can")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    return p.parse_args(argv)


def _save_state(path: Path, step: int, modules: dict, ema: dict, opt: torch.optim.AdamW, params: list) -> None:
    state: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        for k, v in module.state_dict().items():
            state[f"model.{name}.{k}"] = v.detach().cpu().contiguous()
    for k, v in ema.items():
        state[f"ema.{k}"] = v.detach().cpu().contiguous()
    for i, p in enumerate(params):
        st = opt.state.get(p)
        if st:
            state[f"opt.{i}.exp_avg"] = st["exp_avg"].cpu().contiguous()
            state[f"opt.{i}.exp_avg_sq"] = st["exp_avg_sq"].cpu().contiguous()
            state[f"opt.{i}.step"] = torch.as_tensor(st["step"]).reshape(1).float().cpu()
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp), metadata={"step": str(step)})
    tmp.replace(path)


def _load_state(path: Path, modules: dict, ema: dict, opt: torch.optim.AdamW, params: list, device) -> int:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        step = int(f.metadata()["step"])
    state = load_file(str(path))
    for name, module in modules.items():
        prefix = f"model.{name}."
        module.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    for k in ema:
        ema[k].copy_(state[f"ema.{k}"])
    for i, p in enumerate(params):
        if f"opt.{i}.exp_avg" in state:
            opt.state[p] = {
                "exp_avg": state[f"opt.{i}.exp_avg"].to(device),
                "exp_avg_sq": state[f"opt.{i}.exp_avg_sq"].to(device),
                "step": state[f"opt.{i}.step"].reshape(()).clone(),
            }
    return step


def _export(out: Path, unet, text, ema: dict, step: int, args: argparse.Namespace) -> None:
    """Write the EMA weights in the shipped format (fp16)."""
    backup = {k: v.detach().clone() for k, v in _named(unet, text).items()}
    named = _named(unet, text)
    with torch.no_grad():
        for k, v in ema.items():
            named[k].copy_(v)
    meta = {"architecture": "toy.model.ToyDiT(**TOY_DIT_CONFIG)", "config": toy_model.TOY_DIT_CONFIG,
            "trained_by": _history(args) + [f"{_command()} (stopped at step {step})"],
            "step": step, "init": str(args.init) if args.init else None,
            "init_text": str(args.init_text) if args.init_text else None,
            "batch": args.batch, "lr": args.lr, "ema": args.ema, "seed": args.seed,
            "weights": f"EMA (decay {args.ema}), stored fp16",
            "heldout": "captions with tw.is_heldout(text) were never trained on"}
    toy_model.save_toy_weights(unet, text, out, meta)
    with torch.no_grad():
        for k, v in backup.items():
            named[k].copy_(v)


def _command() -> str:
    return "python scripts/train_toy.py " + " ".join(sys.argv[1:])


def _history(args: argparse.Namespace) -> list[str]:
    """The commands that made the --init weights (their meta.json), so a resumed model lists all of its own."""
    source = args.init or args.init_text
    meta = source / "meta.json" if source else None
    if meta is None or not meta.is_file():
        return []
    previous = json.loads(meta.read_text()).get("trained_by", [])
    if args.init_text and not args.init:
        return [f"text encoder only: {c}" for c in previous]
    return list(previous)


class CrossAttentionMaps:
    """Records each cross-attention layer's probabilities [B, L, S], averaged over heads, with their
    gradient (a controller for `attention.FusionAttnProcessor` that records and never fuses)."""

    def __init__(self) -> None:
        self.maps: list[torch.Tensor] = []

    def records(self, tokens: int) -> bool:
        return True

    def fusing(self, block: int) -> bool:
        return False

    def record_cross(self, query: torch.Tensor, key: torch.Tensor, scale: float, bias: torch.Tensor | None = None) -> None:
        scores = (query @ key.transpose(-1, -2)) * scale
        if bias is not None:
            scores = scores + bias
        self.maps.append(scores.softmax(dim=-1).mean(dim=1))

    def take(self) -> torch.Tensor:
        """The mean over layers of this forward's maps, and forget them."""
        out = torch.stack(self.maps).mean(0)
        self.maps = []
        return out


def scene_batch(captions: list[str], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`tw.make_batch`'s images (the same draws from `rng`) and each scene's object masks [B, 2, S, S]."""
    scenes = [tw.sample_scene(c, rng) for c in captions]
    images = np.stack([tw.render(s) for s in scenes])
    masks = np.stack([[tw.object_mask(o.cx, o.cy, o.half) for o in s.objects] for s in scenes])
    return images, masks


def attention_loss(maps: torch.Tensor, cells: torch.Tensor, positions: list[list[list[int]]],
                   weight: torch.Tensor) -> torch.Tensor:
    """KL(object cells || item map) per item, normalised over the token grid, weighted per sample.
    maps [B, L, S]; cells [B, 2, L] (each object's share of each token's pixels)."""
    item_maps = torch.stack([torch.stack([maps[b][:, toks].sum(-1) for toks in pos]) for b, pos in enumerate(positions)])
    q = item_maps / item_maps.sum(-1, keepdim=True).clamp_min(1e-12)
    t = cells / cells.sum(-1, keepdim=True).clamp_min(1e-12)
    kl = (t * (t.clamp_min(1e-12).log() - q.clamp_min(1e-12).log())).sum(-1).mean(-1)  # [B]
    return (weight * kl).sum() / weight.sum().clamp_min(1e-12)


def _named(unet, text) -> dict[str, torch.Tensor]:
    return {**{f"unet.{k}": p for k, p in unet.named_parameters()},
            **{f"text.{k}": p for k, p in text.named_parameters()}}


def train(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    unet, text = toy_model.load_toy_modules(args.init, strict=False) if args.init else toy_model.build_toy_modules(seed=args.seed)
    if args.init_text:
        text.load_state_dict({k: v.float() for k, v in load_file(str(args.init_text / "text_encoder.safetensors")).items()})
    unet.to(device).train()
    text.to(device).train()
    tokenizer = load_tokenizer()
    scheduler = DDPMScheduler(**{k: v for k, v in SD_SCHEDULER_CONFIG.items() if k not in ("set_alpha_to_one",)})
    alphas = scheduler.alphas_cumprod.to(device)
    if args.train_only == "attn2-qk":
        for name, p in (*unet.named_parameters(prefix="unet"), *text.named_parameters(prefix="text")):
            p.requires_grad_(".attn2.to_q." in name or ".attn2.to_k." in name)
    params = [p for p in (*unet.parameters(), *text.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    ema = {k: p.detach().clone() for k, p in _named(unet, text).items()}
    named = _named(unet, text)
    modules = {"unet": unet, "text": text}
    state_path = args.out / "state.safetensors"
    step = 0
    if args.resume and state_path.is_file():
        step = _load_state(state_path, modules, ema, opt, params, device)
        log.info("resumed at step %d", step)
    captions = tw.train_captions()
    # token ids of every caption (and of ""), once
    vocab = captions + [""]
    ids_all = tokenizer(vocab, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    ids_all = ids_all.to(device)
    recorder = None
    if args.attn_supervision:
        recorder = CrossAttentionMaps()
        attention.install(unet, recorder)  # type: ignore[arg-type]  # duck-typed: records, never fuses
        item_positions = [[list(it.positions) for it in map_items(tokenizer, c, tw.parse_caption(c).items, [0.0, 0.0])]
                          for c in captions]
        side = tw.IMAGE_SIZE // toy_model.LATENT_FACTOR // unet.config.patch_size  # the token grid
    t0 = time.time()
    losses: list[float] = []
    aux_losses: list[float] = []
    while step < args.steps:
        rng = np.random.default_rng([args.seed, step])
        idx = rng.integers(0, len(captions), size=args.batch)
        images, objects = scene_batch([captions[i] for i in idx], rng)
        drop = rng.random(args.batch) < args.uncond
        idx = np.where(drop, len(captions), idx)
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1)
        x0 = F.pixel_unshuffle(pixels, toy_model.LATENT_FACTOR).to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (args.batch,), generator=gen).to(device)
        a = alphas[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        cond = text(ids_all[torch.from_numpy(idx).to(device)])[0]
        pred = unet(x_t, t, encoder_hidden_states=cond).sample
        if args.min_snr:
            snr = a.flatten() / (1 - a.flatten())
            weight = snr.clamp(max=args.min_snr) / snr
            loss = (weight * (pred - noise).pow(2).mean(dim=(1, 2, 3))).mean()
        else:
            loss = F.mse_loss(pred, noise)
        if recorder is not None:
            maps = recorder.take()
            cells = torch.from_numpy(toy_scorer.cell_shares(objects, side)).float().to(device)  # [B, 2, L]
            # captions dropped for guidance have no items; the noisiest steps cannot know where objects go
            weight = torch.from_numpy(~drop).float().to(device) * a.flatten()
            aux = attention_loss(maps, cells, [item_positions[i] if i < len(captions) else [[], []] for i in idx],
                                 weight)
            aux_losses.append(float(aux.detach()))
            loss = loss + args.attn_supervision * aux
        lr = args.lr * min(1.0, (step + 1) / max(1, args.warmup))
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(args.ema, (1 + step) / (10 + step))
            for k, p in named.items():
                ema[k].lerp_(p.detach(), 1 - decay)
        step += 1
        losses.append(float(loss.detach()))
        if step % 50 == 0:
            log.info("step %d loss %.4f%s (%.2f s/step)", step, np.mean(losses[-50:]),
                     f" (attention KL {np.mean(aux_losses[-50:]):.3f})" if aux_losses else "",
                     (time.time() - t0) / len(losses))
        out_of_time = args.max_minutes and (time.time() - t0) > 60 * args.max_minutes
        if step % args.save_every == 0 or step == args.steps or out_of_time:
            _save_state(state_path, step, modules, ema, opt, params)
            _export(args.out, unet, text, ema, step, args)
            log.info("saved step %d", step)
        if out_of_time:
            break
    (args.out / "train_log.json").write_text(json.dumps({"step": step, "last_losses": losses[-200:]}))
    return step


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    train(parse_args(argv))


if __name__ == "__main__":
    main()
