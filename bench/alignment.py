"""CPU: the paper's claim in the toy world, as a paired experiment with power.

    .venv/bin/python bench/alignment.py        # defaults below: 5 seeds, about 40 min on 2 idle cores

Arms: `none` (the shipped toy model), `plain` (DPO on best-vs-worst sample pairs) and `fusion`
(DPO on D-Fusion pairs). Everything but `training.pairs` is equal between the two trained arms:

- the same training captions per seed (a seeded draw from the training split), the same sample
  seeds, the same optimizer steps per epoch (`training.steps_per_epoch`) of the same number of
  pairs, so both make the same number of pair visits whatever the pair filter keeps;
- every arm, the untrained model included, is scored on the same evaluation noise: all 46
  held-out captions x --eval-seeds fixed seeds, plus the seed's training captions on fresh seeds;
- the learning rate is tuned per arm on a validation split (captions of the training split that
  no job trains on), never on the held-out captions, with its own tuning seed;
- each (seed, arm) is one embedded job (workers/embedded.py): the service's own stages.

Per seed, the paired differences plain - none, fusion - none and fusion - plain of the mean
held-out score; their mean and 95 % t-interval over seeds are printed as
`paired difference plain-none: +0.050 (95% CI +0.021 to +0.079)`. Writes summary.json and
alignment.svg under --out; the last stdout line is the summary.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.stats import mean_ci  # noqa: E402
from dfusion_core.config import SamplingConfig  # noqa: E402
from dfusion_core.evaluation import evaluate_scores  # noqa: E402
from dfusion_core.lora import ADAPTER, WEIGHTS_NAME, has_lora, load_lora_bytes  # noqa: E402
from dfusion_core.toy import model as toy_model  # noqa: E402
from dfusion_core.toy import scorer as toy_scorer  # noqa: E402
from dfusion_core.toy import world as tw  # noqa: E402
from services.jobspec import JobSpec  # noqa: E402
from workers.embedded import run_embedded  # noqa: E402

ARMS = ("plain", "fusion")
DIFFERENCES = (("plain", "none"), ("fusion", "none"), ("fusion", "plain"))
EVAL_SEED_BASE = 10_000  # evaluation noise: seeds 10000.. for every arm and every training seed
TUNE_SEED = 1_000  # the job seed of the learning-rate search (not one of the reported seeds)


def splits(args: argparse.Namespace) -> tuple[list[str], list[str], list[str]]:
    """(training pool, validation captions, held-out captions): the validation captions are a fixed
    draw from the training split that no job trains on."""
    train = tw.train_captions()
    rng = np.random.default_rng(2024)
    val_idx = set(rng.choice(len(train), size=args.val_prompts, replace=False).tolist())
    pool = [c for i, c in enumerate(train) if i not in val_idx]
    return pool, [train[i] for i in sorted(val_idx)], tw.heldout_captions()[: args.eval_prompts]


def training_captions(pool: list[str], seed: int, n: int) -> list[str]:
    rng = np.random.default_rng([1234, seed])
    return [pool[i] for i in rng.choice(len(pool), size=n, replace=False)]


def job_spec(captions: list[str], seed: int, pairs: str, lr: float, args: argparse.Namespace) -> JobSpec:
    return JobSpec.model_validate({
        "prompts": [{"text": c, "items": tw.parse_caption(c).items, "mask_thresholds": [0.02, 0.02]} for c in captions],
        "model": "toy", "scorer": "toy", "samples_per_prompt": args.samples, "epochs": args.epochs, "seed": seed,
        "sampling": {"num_steps": args.steps, "guidance_scale": args.guidance, "eta": 1.0, "batch_size": args.batch},
        "fusion": tw.TOY_FUSION,
        "training": {"algorithm": args.algorithm, "pairs": pairs, "learning_rate": lr, "batch_pairs": args.batch_pairs,
                     "steps_per_epoch": args.steps_per_epoch, "skip_last_steps": args.skip_last_steps},
        # the job's own per-epoch check is kept to one sample: the bench scores every arm itself
        "eval_prompts": captions[:1], "eval_seeds": 1,
    })


class Evaluator:
    """Scores a model's samples on a fixed (caption, seed) grid, the same noise for every arm."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.model = toy_model.load_toy()
        self.scorer = toy_scorer.ToyScorer()
        self.sampling = SamplingConfig(num_steps=args.steps, guidance_scale=args.guidance, eta=1.0,
                                       batch_size=args.eval_batch)

    def scores(self, captions: list[str], seeds: list[int], lora: bytes | None) -> list[float]:
        """Per-caption mean scores, with the LoRA checkpoint `lora` (None = the untrained model)."""
        unet = self.model.unet
        if has_lora(unet):
            unet.delete_adapters(ADAPTER)
        if lora is not None:
            load_lora_bytes(unet, lora)
        flat = evaluate_scores(self.model, self.scorer, captions, seeds, self.sampling)
        return flat.view(len(captions), len(seeds)).mean(dim=1).tolist()


def train_arm(captions: list[str], seed: int, pairs: str, lr: float, args: argparse.Namespace,
              tmp: Path) -> tuple[bytes, dict[str, Any]]:
    """One embedded job; its last LoRA checkpoint and a digest of its metrics."""
    t0 = time.time()
    out = tmp / f"{seed}-{pairs}-{lr:g}"
    result = run_embedded(job_spec(captions, seed, pairs, lr, args), out, models={"toy": "toy"})
    if result.status != "succeeded":
        raise RuntimeError(f"seed {seed} {pairs} lr {lr}: job {result.status}: {result.error}")
    lora = (out / "checkpoints" / str(args.epochs) / WEIGHTS_NAME).read_bytes()
    keep = ("optimizer_steps", "pairs_total", "pairs_trained", "target_win_rate", "mean_target_gain",
            "loss", "reward_accuracy", "reward_margin", "heldout_pairs_reward_accuracy", "heldout_pairs_reward_margin")
    digest = {"wall_s": round(time.time() - t0, 1), "epochs": [{k: m.get(k) for k in keep} for m in result.metrics]}
    return lora, digest


def tune(pool: list[str], val: list[str], evaluator: Evaluator, args: argparse.Namespace,
         tmp: Path) -> dict[str, Any]:
    """The learning rate per arm with the best mean validation score (one job per (arm, lr))."""
    captions = training_captions(pool, TUNE_SEED, args.prompts)
    seeds = [EVAL_SEED_BASE + 500 + k for k in range(args.val_seeds)]
    base = statistics.fmean(evaluator.scores(val, seeds, None))
    table: dict[str, dict[str, float]] = {}
    for arm in ARMS:
        table[arm] = {}
        for lr in args.lrs:
            lora, _ = train_arm(captions, TUNE_SEED, arm, lr, args, tmp)
            table[arm][f"{lr:g}"] = statistics.fmean(evaluator.scores(val, seeds, lora))
            log(f"tune {arm} lr {lr:g}: validation {table[arm][f'{lr:g}']:.4f} (untrained {base:.4f})")
    best = {arm: float(max(table[arm], key=lambda k: table[arm][k])) for arm in ARMS}
    return {"validation_untrained": base, "validation": table, "best_lr": best}


def run(args: argparse.Namespace) -> dict[str, Any]:
    pool, val, heldout = splits(args)
    evaluator = Evaluator(args)
    eval_seeds = [EVAL_SEED_BASE + k for k in range(args.eval_seeds)]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        tuning = tune(pool, val, evaluator, args, tmp) if len(args.lrs) > 1 else \
            {"best_lr": {arm: args.lrs[0] for arm in ARMS}}
        heldout_none = evaluator.scores(heldout, eval_seeds, None)
        per_seed = []
        for seed in args.seeds:
            captions = training_captions(pool, seed, args.prompts)
            fresh = [EVAL_SEED_BASE + 1000 + k for k in range(args.train_eval_seeds)]
            row: dict[str, Any] = {"seed": seed, "captions": captions,
                                   "heldout": {"none": statistics.fmean(heldout_none)},
                                   "train_captions": {"none": statistics.fmean(evaluator.scores(captions, fresh, None))},
                                   "jobs": {}}
            for arm in ARMS:
                lora, digest = train_arm(captions, seed, arm, tuning["best_lr"][arm], args, tmp)
                row["heldout"][arm] = statistics.fmean(evaluator.scores(heldout, eval_seeds, lora))
                row["train_captions"][arm] = statistics.fmean(evaluator.scores(captions, fresh, lora))
                row["jobs"][arm] = digest
            log(json.dumps({k: row[k] for k in ("seed", "heldout", "train_captions")}))
            per_seed.append(row)
    return summarise(per_seed, tuning, args)


def summarise(per_seed: list[dict[str, Any]], tuning: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"differences": {}, "differences_train_captions": {}}
    for a, b in DIFFERENCES:
        name = f"{a}-{b}"
        out["differences"][name] = mean_ci([r["heldout"][a] - r["heldout"][b] for r in per_seed])
        out["differences_train_captions"][name] = mean_ci([r["train_captions"][a] - r["train_captions"][b]
                                                           for r in per_seed])
    out["heldout_mean"] = {arm: statistics.fmean(r["heldout"][arm] for r in per_seed) for arm in ("none", *ARMS)}
    out["tuning"] = tuning
    out["per_seed"] = per_seed
    out["config"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    out["eval_samples_per_arm"] = args.eval_prompts * args.eval_seeds
    return out


def difference_line(name: str, ci: dict[str, float]) -> str:
    return f"paired difference {name}: {ci['mean']:+.3f} (95% CI {ci['lo']:+.3f} to {ci['hi']:+.3f})"


def svg_plot(summary: dict[str, Any], title: str) -> str:
    """Per-seed paired differences (dots) with their mean and 95 % CI (bar), one column each."""
    names = list(summary["differences"])
    w, h, pad, top = 460, 300, 56, 40
    pts = [r["heldout"] for r in summary["per_seed"]]
    values = [d["lo"] for d in summary["differences"].values()] + [d["hi"] for d in summary["differences"].values()]
    values += [p[a] - p[b] for p in pts for a, b in DIFFERENCES]
    span = max(0.02, max(abs(v) for v in values if v == v)) * 1.15
    y = lambda v: top + (h - top - pad) * (span - v) / (2 * span)  # noqa: E731
    col = (w - pad - 20) / len(names)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<text x="{w / 2}" y="20" text-anchor="middle">{title}</text>',
           f'<line x1="{pad}" y1="{y(0)}" x2="{w - 10}" y2="{y(0)}" stroke="#888" stroke-dasharray="4 3"/>',
           f'<line x1="{pad}" y1="{top}" x2="{pad}" y2="{h - pad}" stroke="black"/>']
    for k in range(-2, 3):
        v = span * k / 2
        out.append(f'<text x="{pad - 6}" y="{y(v) + 4}" text-anchor="end">{v:+.3f}</text>')
    for i, (name, (a, b)) in enumerate(zip(names, DIFFERENCES, strict=True)):
        cx = pad + col * (i + 0.5)
        ci = summary["differences"][name]
        out.append(f'<line x1="{cx}" y1="{y(ci["lo"])}" x2="{cx}" y2="{y(ci["hi"])}" stroke="#d0554a" stroke-width="3"/>')
        out.append(f'<rect x="{cx - 14}" y="{y(ci["mean"]) - 1.5}" width="28" height="3" fill="#d0554a"/>')
        for p in pts:
            out.append(f'<circle cx="{cx + 22}" cy="{y(p[a] - p[b])}" r="3" fill="black"/>')
        out.append(f'<text x="{cx}" y="{h - pad + 18}" text-anchor="middle">{name}</text>')
        out.append(f'<text x="{cx}" y="{h - pad + 32}" text-anchor="middle">{ci["mean"]:+.3f}</text>')
    out.append("</svg>")
    return "\n".join(out)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--prompts", type=int, default=6, help="training captions per job")
    p.add_argument("--val-prompts", type=int, default=12, help="validation captions (learning-rate search)")
    p.add_argument("--val-seeds", type=int, default=4)
    p.add_argument("--samples", type=int, default=8, help="samples per caption per epoch (multiple of 4)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--steps", type=int, default=8, help="DDIM steps for sampling, fusion, training and evaluation")
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--batch", type=int, default=8, help="samples per UNet call in the jobs")
    p.add_argument("--eval-batch", type=int, default=32, help="samples per UNet call in the evaluation")
    p.add_argument("--batch-pairs", type=int, default=tw.TOY_TRAINING["batch_pairs"], help="pairs per optimizer step")
    p.add_argument("--steps-per-epoch", type=int, default=tw.TOY_TRAINING["steps_per_epoch"],
                   help="optimizer steps per epoch, every arm")
    p.add_argument("--skip-last-steps", type=int, default=tw.TOY_TRAINING["skip_last_steps"],
                   help="final denoising steps left out of the loss")
    p.add_argument("--algorithm", default="trajectory_dpo", choices=["trajectory_dpo", "diffusion_dpo"],
                   help="the preference loss of both trained arms (its beta: the algorithm's default)")
    p.add_argument("--lrs", type=float, nargs="+", default=[3e-4, 1e-3],
                   help="learning rates searched per arm on the validation split (one value: no search)")
    p.add_argument("--eval-prompts", type=int, default=46, help="held-out captions scored (46 = all)")
    p.add_argument("--eval-seeds", type=int, default=8, help="evaluation seeds per held-out caption")
    p.add_argument("--train-eval-seeds", type=int, default=4, help="fresh seeds per training caption")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "alignment")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    summary = run(args)
    summary["wall_s"] = round(time.time() - t0, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    title = f"toy world, held-out captions: paired differences over {len(args.seeds)} seeds (95% CI)"
    (args.out / "alignment.svg").write_text(svg_plot(summary, title))
    for name, ci in summary["differences"].items():
        print(difference_line(name, ci))
    for name, ci in summary["differences_train_captions"].items():  # the captions trained on, fresh noise
        print(difference_line(name, ci).replace("paired difference", "training captions, paired difference"))
    print(json.dumps({"differences": {k: round(v["mean"], 4) for k, v in summary["differences"].items()},
                      "heldout_mean": {k: round(v, 4) for k, v in summary["heldout_mean"].items()},
                      "wall_s": summary["wall_s"]}))
    return summary


if __name__ == "__main__":
    main()
