"""CPU: where one round of preference training moves the toy model, fact by fact (core only, no service).

    .venv/bin/python bench/preference_probe.py --algorithm diffusion_dpo --lr 1e-3   # ~8 min on 2 idle cores

One seed, one arm, a larger budget than bench/alignment.py gives: --captions training captions x
--samples samples (--ddim-steps DDIM steps, CFG 5, eta 1), plain best-vs-worst pairs per caption with ties
dropped (`dfusion_core.pairs.select_plain_pairs` + the `winner_beats_loser` filter), --steps
optimizer steps of --batch-pairs pairs drawn at random, LoRA rank --rank. Then, on the same noise
before and after: the 46 held-out captions x 4 seeds (the same DDIM steps), and the first 46 training captions x the same
4 seeds (captions trained on, noise never trained on). Prints the share of each of the caption's
five facts (A's colour, A's shape, B's colour, B's shape, the relation) that hold, and the paired
differences with their standard errors over samples. A probe for choosing what bench/alignment.py
should run, not a result on its own (one seed: no spread over training runs).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.toy_facts import FACTS, sample_facts  # noqa: E402
from dfusion_core import pipeline  # noqa: E402
from dfusion_core.config import SamplingConfig, TrainingConfig  # noqa: E402
from dfusion_core.lora import adapters_disabled  # noqa: E402
from dfusion_core.pairs import carries_preference, select_plain_pairs  # noqa: E402
from dfusion_core.toy import model as toy_model  # noqa: E402
from dfusion_core.toy import scorer as toy_scorer  # noqa: E402
from dfusion_core.toy import world as tw  # noqa: E402
from dfusion_core.training import Trainer, TrainPair  # noqa: E402

EVAL_SEEDS = [10_000 + k for k in range(4)]


def facts(model, captions: list[str], sampling: SamplingConfig) -> np.ndarray:
    """[len(captions) * len(EVAL_SEEDS), 5] booleans as floats, caption-major."""
    return sample_facts(model, captions, EVAL_SEEDS, sampling).reshape(-1, len(FACTS))


def paired(before: np.ndarray, after: np.ndarray) -> dict:
    d = after.mean(1) - before.mean(1)
    return {"before": round(float(before.mean()), 4), "after": round(float(after.mean()), 4),
            "diff": round(float(d.mean()), 4), "se": round(float(d.std(ddof=1) / len(d) ** 0.5), 4),
            "facts_before": dict(zip(FACTS, before.mean(0).round(3).tolist(), strict=True)),
            "facts_after": dict(zip(FACTS, after.mean(0).round(3).tolist(), strict=True))}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algorithm", default="diffusion_dpo", choices=["trajectory_dpo", "diffusion_dpo"])
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--captions", type=int, default=128)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-pairs", type=int, default=8)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--ddim-steps", type=int, default=8, help="DDIM steps of the samples and the evaluation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    model, scorer = toy_model.load_toy(), toy_scorer.ToyScorer()
    sampling = SamplingConfig(num_steps=args.ddim_steps, guidance_scale=5.0, eta=1.0, batch_size=46)
    rng = np.random.default_rng(args.seed)
    pool = tw.train_captions()
    captions = [pool[i] for i in rng.choice(len(pool), args.captions, replace=False)]
    prompts = [c for c in captions for _ in range(args.samples)]
    first = 1_000_000 * (args.seed + 1)
    trajs = pipeline.sample(model, prompts, sampling, seeds=list(range(first, first + len(prompts))))
    scores = scorer.score(torch.stack([t.image for t in trajs]), prompts).tolist()
    pairs = []
    for j in range(args.captions):
        s = scores[j * args.samples : (j + 1) * args.samples]
        for plan in select_plain_pairs(s):
            if carries_preference(s[plan.reference], s[plan.base], "winner_beats_loser"):
                w, lo = j * args.samples + plan.reference, j * args.samples + plan.base
                pairs.append(TrainPair(trajs[w], trajs[lo], scores[w], scores[lo]))
    config = TrainingConfig(algorithm=args.algorithm, learning_rate=args.lr, batch_pairs=args.batch_pairs,
                            lora_rank=args.rank, skip_last_steps=2)
    trainer = Trainer(model, config, seed=args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    accuracy = []
    for _ in range(args.steps):
        batch = torch.randperm(len(pairs), generator=gen)[: args.batch_pairs].tolist()
        accuracy.append(trainer.train_step([pairs[i] for i in batch]).extra.get("reward_accuracy", float("nan")))
    heldout, trained = tw.heldout_captions(), captions[:46]
    with adapters_disabled(model.unet):
        base = {"heldout": facts(model, heldout, sampling), "training": facts(model, trained, sampling)}
    result = {"config": vars(args), "pairs": len(pairs), "mean_sample_score": round(float(np.mean(scores)), 4),
              "reward_accuracy_last_50_steps": round(float(np.nanmean(accuracy[-50:])), 3),
              "heldout": paired(base["heldout"], facts(model, heldout, sampling)),
              "training_captions": paired(base["training"], facts(model, trained, sampling)),
              "wall_s": round(time.time() - t0, 1)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
