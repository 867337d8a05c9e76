"""CPU: what toy-world weights follow, fact by fact, on the same noise (no training), and the gate a
model must pass before preference training means anything.

    .venv/bin/python bench/toy_facts.py shipped runs/toy          # ~1 min a model on 2 idle cores

For each weights folder (`shipped` = dfusion_core/assets/toy; any folder `scripts/train_toy.py`
writes): --captions held-out and --captions training captions x --seeds seeds (10 DDIM steps, CFG 5,
eta 1), the rate of each of the caption's facts, read conditionally so each measures one skill:

- colour_a, colour_b: the object's colour is present;
- pattern_a, pattern_b: the pattern is right, among images where that colour is present;
- relation: the relation holds, among images where both colours are present.

Chance is measured the same way on exact renders of *another* training caption (a perfect drawer
that ignores the prompt): colours ~0.5, patterns ~0.33, the relation ~0.5. The gate (issue: "D-Fusion
shows its effect"): on the training captions every fact is followed at least 0.15 above chance,
and the mean toy score is at most 0.85, so a preference has room to teach. For every folder after
the first, the paired difference from the first on the held-out samples with its 95 % CI over
captions (the caption is the independent unit; its seeds share it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.stats import mean_ci  # noqa: E402
from dfusion_core import pipeline  # noqa: E402
from dfusion_core.config import SamplingConfig  # noqa: E402
from dfusion_core.toy import model as toy_model  # noqa: E402
from dfusion_core.toy import scorer as toy_scorer  # noqa: E402
from dfusion_core.toy import world as tw  # noqa: E402

FACTS = ("colour_a", "pattern_a", "colour_b", "pattern_b", "relation")
ABOVE_CHANCE, MAX_MEAN = 0.15, 0.85
EVAL_SEED_BASE = 10_000
CAPTION_DRAW_SEED = 46


def conditional_rates(raw: np.ndarray) -> dict[str, float]:
    """raw [N, 5] booleans in caption_facts' order (A colour, A pattern, B colour, B pattern, relation;
    each pattern and the relation already require their colours) -> each fact's rate given what it needs."""
    a, b = raw[:, 0] > 0, raw[:, 2] > 0
    both = a & b

    def rate(hits: np.ndarray, given: np.ndarray) -> float:
        return float(hits[given].mean()) if given.any() else 0.0

    return {"colour_a": float(a.mean()), "pattern_a": rate(raw[:, 1] > 0, a), "colour_b": float(b.mean()),
            "pattern_b": rate(raw[:, 3] > 0, b), "relation": rate(raw[:, 4] > 0, both)}


def chance(n: int = 2000, seed: int = 7) -> dict[str, float]:
    """Fact rates of exact renders of a random other training caption, scored against the caption."""
    rng = np.random.default_rng(seed)
    pool = tw.train_captions()
    raw = []
    for _ in range(n):
        asked, drawn = (pool[i] for i in rng.choice(len(pool), size=2, replace=False))
        image = tw.render(tw.sample_scene(drawn, rng))
        raw.append(toy_scorer.caption_facts(image, asked))
    return conditional_rates(np.asarray(raw, float))


def sample_facts(model, captions: list[str], seeds: list[int], sampling: SamplingConfig) -> np.ndarray:
    """[len(captions), len(seeds), 5] booleans as floats: caption_facts of every (caption, seed) sample."""
    jobs = [(c, s) for c in captions for s in seeds]
    out = []
    for k in range(0, len(jobs), sampling.batch_size):
        chunk = jobs[k : k + sampling.batch_size]
        trajs = pipeline.sample(model, [c for c, _ in chunk], sampling, seeds=[s for _, s in chunk])
        out += [toy_scorer.caption_facts(t.image.numpy(), c) for t, (c, _) in zip(trajs, chunk, strict=True)]
    return np.asarray(out, float).reshape(len(captions), len(seeds), len(FACTS))


def gate(rates: dict[str, float], mean_score: float, base: dict[str, float]) -> dict:
    short = {f: round(rates[f] - base[f], 3) for f in FACTS}
    return {"above_chance": short, "mean_score": round(mean_score, 4),
            "passed": all(v >= ABOVE_CHANCE for v in short.values()) and mean_score <= MAX_MEAN}


def evaluate_folder(folder: str, captions: dict[str, list[str]], seeds: list[int], sampling: SamplingConfig,
                    base: dict[str, float]) -> tuple[dict, np.ndarray]:
    model = toy_model.load_toy(folder=None if folder == "shipped" else folder)
    row: dict = {}
    per_caption = None
    for split, caps in captions.items():
        raw = sample_facts(model, caps, seeds, sampling)
        flat = raw.reshape(-1, len(FACTS))
        rates = conditional_rates(flat)
        row[split] = {"mean_score": round(float(flat.mean()), 4), **{f: round(v, 3) for f, v in rates.items()}}
        if split == "training":
            row["gate"] = gate(rates, float(flat.mean()), base)
        if split == "heldout":
            per_caption = raw.mean(axis=(1, 2))
    assert per_caption is not None
    return row, per_caption


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", help="toy weights folders; 'shipped' = the weights in the package")
    p.add_argument("--captions", type=int, default=46, help="captions per split (at most the 22 held-out ones there)")
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--ddim-steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    sampling = SamplingConfig(num_steps=args.ddim_steps, guidance_scale=5.0, eta=1.0, batch_size=32)
    # a seeded draw of training captions: the list is sorted by A's colour, so its head is all "a red ..."
    pool = tw.train_captions()
    drawn = np.random.default_rng(CAPTION_DRAW_SEED).choice(len(pool), size=min(args.captions, len(pool)), replace=False)
    captions = {"heldout": tw.heldout_captions()[: args.captions], "training": [pool[i] for i in sorted(drawn)]}
    seeds = [EVAL_SEED_BASE + k for k in range(args.seeds)]
    base = chance()
    print("chance", json.dumps({f: round(v, 3) for f, v in base.items()}), flush=True)
    results: dict = {"chance": base}
    first = None
    for folder in args.folders:
        row, per_caption = evaluate_folder(folder, captions, seeds, sampling, base)
        if first is None:
            first = per_caption
        else:
            ci = mean_ci((per_caption - first).tolist())
            row["heldout_vs_first"] = {"diff": round(ci["mean"], 4), "lo": round(ci["lo"], 4), "hi": round(ci["hi"], 4)}
        results[folder] = row
        print(folder, json.dumps(row), flush=True)
    results["mean_heldout"] = statistics.fmean(r["heldout"]["mean_score"] for k, r in results.items() if k != "chance")
    return results


if __name__ == "__main__":
    main()
