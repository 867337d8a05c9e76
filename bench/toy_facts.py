"""CPU: what toy-world weights follow, fact by fact, on the same noise (no training).

    .venv/bin/python bench/toy_facts.py shipped runs/toy          # ~40 s a model on 2 idle cores

For each weights folder (`shipped` = dfusion_core/assets/toy; any folder `scripts/train_toy.py`
writes): the 46 held-out captions and the first 46 training captions x 4 seeds (10 DDIM steps, CFG 5,
eta 1), the share of each of the caption's five facts that hold (`bench/preference_probe.py`'s
`facts`), and, for every folder after the first, the paired difference from the first on the
held-out samples with its 95 % CI (`bench/stats.py`). For choosing which toy weights to ship.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.preference_probe import FACTS, facts  # noqa: E402
from bench.stats import mean_ci  # noqa: E402
from dfusion_core.config import SamplingConfig  # noqa: E402
from dfusion_core.toy import model as toy_model  # noqa: E402
from dfusion_core.toy import world as tw  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", help="toy weights folders; 'shipped' = the weights in the package")
    p.add_argument("--ddim-steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    sampling = SamplingConfig(num_steps=args.ddim_steps, guidance_scale=5.0, eta=1.0, batch_size=32)
    captions = {"heldout": tw.heldout_captions(), "training": tw.train_captions()[:46]}
    results, first = {}, None
    for folder in args.folders:
        model = toy_model.load_toy(folder=None if folder == "shipped" else folder)
        rates = {split: facts(model, caps, sampling) for split, caps in captions.items()}
        row = {split: {"mean": round(float(r.mean()), 4), **dict(zip(FACTS, r.mean(0).round(3).tolist(), strict=True))}
               for split, r in rates.items()}
        per_sample = rates["heldout"].mean(1)
        if first is None:
            first = per_sample
        else:
            ci = mean_ci((per_sample - first).tolist())
            row["heldout_vs_first"] = {"diff": round(ci["mean"], 4), "lo": round(ci["lo"], 4), "hi": round(ci["hi"], 4)}
        results[folder] = row
        print(folder, json.dumps(row), flush=True)
    return results


if __name__ == "__main__":
    main()
