"""CPU: the paper's protocol in the toy world, as a paired experiment with power.

    .venv/bin/python bench/alignment.py        # defaults below: 8 seeds, the preset's epoch, under 60 min on 2 idle cores

Online epochs on a fixed set of training captions, as the paper trains: sample with the current
policy, score, pair, train, publish, repeat (each (seed, arm) is one embedded job of --epochs
epochs: the service's own stages, workers/embedded.py). Arms: `none` (the shipped toy model),
`plain` (DPO on best-vs-worst sample pairs) and `fusion` (DPO on D-Fusion pairs). Everything but
`training.pairs` is equal between the two trained arms:

- the same training captions per seed (a seeded draw from the training split), the same sample
  seeds, the same optimizer steps per epoch of the same number of pairs, so both make the same
  pair visits whatever the pair filter keeps. The fusion arm trains first, on the preset's budget
  in passes (`--max-passes`, at most `--steps-per-epoch`: 5 passes over the D-Fusion pairs the
  filter keeps, about half of six captions' 96), so its few kept pairs are not memorised;
  the plain arm then takes as many steps (fewer passes over its own, more numerous pairs). Each
  job's digest gives `pair_passes`;
- after every epoch every arm's checkpoint is scored on the same evaluation noise: the seed's
  training captions on fresh seeds (the primary measure: the paper's protocol) and the held-out
  captions (secondary, reported as it falls); the untrained model once per seed on the same noise;
- the learning rate is chosen per arm on validation noise (the tuning seed's training captions on
  seeds no evaluation uses), never on evaluation noise.

Per seed, the paired differences plain - none, fusion - none and fusion - plain of the mean score
after the last epoch; the seed (one training run) is the independent unit, so the mean and its 95 %
t-interval are over seeds. Printed as `paired difference plain-none: +0.050 (95% CI +0.021 to
+0.079)` (training captions) and `held-out paired difference fusion-none: ...`. Writes summary.json
and alignment.svg (score against epoch per arm, 95 % CI bands over seeds) under --out; the last
stdout line is the summary.

`--probe` is for choosing what to run, on validation noise only: both arms at one learning rate on
job seeds the reported run does not use (e.g. `--seeds 100 101`), each checkpoint scored fact by fact
on the validation seeds, and the first epoch's samples and fused targets read the same way; writes
probe.json under --out. `--training` and `--fusion` lay JSON settings over both arms' jobs.
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
from PIL import Image  # noqa: E402

from bench.stats import mean_ci  # noqa: E402
from bench.toy_facts import FACTS, conditional_rates, sample_facts  # noqa: E402
from dfusion_core.config import SamplingConfig  # noqa: E402
from dfusion_core.evaluation import evaluate_scores  # noqa: E402
from dfusion_core.lora import ADAPTER, WEIGHTS_NAME, has_lora, load_lora_bytes  # noqa: E402
from dfusion_core.presets import TOY_JOB  # noqa: E402
from dfusion_core.toy import model as toy_model  # noqa: E402
from dfusion_core.toy import scorer as toy_scorer  # noqa: E402
from dfusion_core.toy import world as tw  # noqa: E402
from services.jobspec import JobSpec  # noqa: E402
from workers.embedded import run_embedded  # noqa: E402

ARMS = ("plain", "fusion")
DIFFERENCES = (("plain", "none"), ("fusion", "none"), ("fusion", "plain"))
EVAL_SEED_BASE = 10_000  # evaluation noise: held-out 10000.., training captions 11000.., every arm
VAL_SEED_BASE = 10_500  # validation noise of the learning-rate search (no evaluation uses it)
TUNE_SEED = 1_000  # the job seed of the learning-rate search (not one of the reported seeds)
SPLITS = ("train_captions", "heldout")


def splits(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """(training pool, held-out captions)."""
    return tw.train_captions(), tw.heldout_captions()[: args.eval_prompts]


def training_captions(pool: list[str], seed: int, n: int) -> list[str]:
    rng = np.random.default_rng([1234, seed])
    return [pool[i] for i in rng.choice(len(pool), size=n, replace=False)]


def job_spec(captions: list[str], seed: int, pairs: str, lr: float, args: argparse.Namespace,
             steps: int | None = None) -> JobSpec:
    """A toy job: the model's preset (scorer, fusion, the rest of training) under the bench's own values.
    `steps`: exactly that many optimizer steps an epoch, no pass cap (the plain arm matching the fusion arm's)."""
    budget = {"steps_per_epoch": args.steps_per_epoch, "max_passes": args.max_passes} if steps is None else \
        {"steps_per_epoch": steps, "max_passes": None}
    return JobSpec.model_validate({
        "prompts": [{"text": c, "items": tw.parse_caption(c).items, "mask_thresholds": [0.5, 0.5]} for c in captions],
        "model": "toy", "samples_per_prompt": args.samples, "epochs": args.epochs, "seed": seed,
        "sampling": {"num_steps": args.steps, "guidance_scale": args.guidance, "eta": 1.0, "batch_size": args.batch},
        "training": {"algorithm": args.algorithm, "pairs": pairs, "learning_rate": lr, "batch_pairs": args.batch_pairs,
                     "skip_last_steps": args.skip_last_steps, **args.training, **budget},
        **({"fusion": args.fusion} if args.fusion else {}),
        # the job's own per-epoch checks are kept to one sample and off: the bench scores every arm itself
        "eval_prompts": captions[:1], "eval_seeds": 1, "train_eval_seeds": 0,
    })


class Evaluator:
    """Scores a model's samples on a fixed (caption, seed) grid, the same noise for every arm."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.model = toy_model.load_toy()
        self.scorer = toy_scorer.ToyScorer()
        self.sampling = SamplingConfig(num_steps=args.steps, guidance_scale=args.guidance, eta=1.0,
                                       batch_size=args.eval_batch)

    def use(self, lora: bytes | None) -> None:
        """Sample with the LoRA checkpoint `lora` from now on (None = the untrained model)."""
        unet = self.model.unet
        if has_lora(unet):
            unet.delete_adapters(ADAPTER)
        if lora is not None:
            load_lora_bytes(unet, lora)

    def scores(self, captions: list[str], seeds: list[int], lora: bytes | None) -> list[float]:
        """Per-caption mean scores, with the LoRA checkpoint `lora` (None = the untrained model)."""
        self.use(lora)
        flat = evaluate_scores(self.model, self.scorer, captions, seeds, self.sampling)
        return flat.view(len(captions), len(seeds)).mean(dim=1).tolist()

    def facts(self, captions: list[str], seeds: list[int], lora: bytes | None) -> dict[str, float]:
        """The mean toy score and each fact's rate (bench/toy_facts.py's reading) of the same samples."""
        self.use(lora)
        raw = sample_facts(self.model, captions, seeds, self.sampling).reshape(-1, len(FACTS))
        return {"mean": float(raw.mean()), **conditional_rates(raw)}


def job_dir(tmp: Path, seed: int, pairs: str, lr: float) -> Path:
    """The run folder of one (seed, arm, learning rate) job."""
    return tmp / f"{seed}-{pairs}-{lr:g}"


def train_arms(captions: list[str], seed: int, lrs: dict[str, float], args: argparse.Namespace,
               tmp: Path) -> dict[str, tuple[list[bytes], dict[str, Any]]]:
    """Both arms' jobs, fusion first: its budget is the preset's (steps_per_epoch under the max_passes
    cap, so its few kept pairs are not memorised), and the plain arm takes as many optimizer steps of
    as many pairs, so both make the same pair visits (exactly at one epoch; over several, the plain arm
    takes the fusion arm's mean an epoch, equal in total up to rounding)."""
    fusion = train_arm(captions, seed, "fusion", lrs["fusion"], args, tmp)
    steps = [e["optimizer_steps"] for e in fusion[1]["epochs"]]
    plain = train_arm(captions, seed, "plain", lrs["plain"], args, tmp, steps=max(1, round(statistics.fmean(steps))))
    return {"plain": plain, "fusion": fusion}


def train_arm(captions: list[str], seed: int, pairs: str, lr: float, args: argparse.Namespace,
              tmp: Path, steps: int | None = None) -> tuple[list[bytes], dict[str, Any]]:
    """One embedded job; its LoRA checkpoint after each epoch and a digest of its metrics."""
    t0 = time.time()
    out = job_dir(tmp, seed, pairs, lr)
    result = run_embedded(job_spec(captions, seed, pairs, lr, args, steps), out, models={"toy": "toy"})
    if result.status != "succeeded":
        raise RuntimeError(f"seed {seed} {pairs} lr {lr}: job {result.status}: {result.error}")
    loras = [(out / "checkpoints" / str(e) / WEIGHTS_NAME).read_bytes() for e in range(1, args.epochs + 1)]
    keep = ("optimizer_steps", "pairs_total", "pairs_trained", "pair_passes", "target_win_rate", "mean_target_gain",
            "loss", "reward_accuracy", "reward_margin", "heldout_pairs_reward_accuracy", "heldout_pairs_reward_margin")
    epochs = [{k: m.get(k) for k in keep} for m in result.metrics]
    return loras, {"wall_s": round(time.time() - t0, 1), "epochs": epochs}


def tune(pool: list[str], evaluator: Evaluator, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """The learning rate per arm with the best mean score after the last epoch on validation noise:
    the tuning seed's own training captions, sampled on seeds no evaluation uses."""
    captions = training_captions(pool, TUNE_SEED, args.prompts)
    seeds = [VAL_SEED_BASE + k for k in range(args.val_seeds)]
    base = statistics.fmean(evaluator.scores(captions, seeds, None))
    table: dict[str, dict[str, float]] = {}
    for lr in args.lrs:
        for arm, (loras, _) in train_arms(captions, TUNE_SEED, {arm: lr for arm in ARMS}, args, tmp).items():
            table.setdefault(arm, {})[f"{lr:g}"] = statistics.fmean(evaluator.scores(captions, seeds, loras[-1]))
            log(f"tune {arm} lr {lr:g}: validation {table[arm][f'{lr:g}']:.4f} (untrained {base:.4f})")
    best = {arm: float(max(table[arm], key=lambda k: table[arm][k])) for arm in ARMS}
    return {"validation_untrained": base, "validation": table, "best_lr": best}


def run(args: argparse.Namespace) -> dict[str, Any]:
    pool, heldout = splits(args)
    evaluator = Evaluator(args)
    heldout_seeds = [EVAL_SEED_BASE + k for k in range(args.eval_seeds)]
    fresh = [EVAL_SEED_BASE + 1000 + k for k in range(args.train_eval_seeds)]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        tuning = tune(pool, evaluator, args, tmp) if len(args.lrs) > 1 else \
            {"best_lr": {arm: args.lrs[0] for arm in ARMS}}
        heldout_none = statistics.fmean(evaluator.scores(heldout, heldout_seeds, None))
        per_seed = []
        for seed in args.seeds:
            captions = training_captions(pool, seed, args.prompts)
            none = statistics.fmean(evaluator.scores(captions, fresh, None))
            # curves[split][arm][e]: mean score after epoch e (e = 0: the untrained model, shared by every arm)
            row: dict[str, Any] = {"seed": seed, "captions": captions, "jobs": {},
                                   "curves": {"train_captions": {"none": [none] * (args.epochs + 1)},
                                              "heldout": {"none": [heldout_none] * (args.epochs + 1)}}}
            for arm, (loras, digest) in train_arms(captions, seed, tuning["best_lr"], args, tmp).items():
                row["curves"]["train_captions"][arm] = [none] + [
                    statistics.fmean(evaluator.scores(captions, fresh, lora)) for lora in loras]
                row["curves"]["heldout"][arm] = [heldout_none] + [
                    statistics.fmean(evaluator.scores(heldout, heldout_seeds, lora)) for lora in loras]
                row["jobs"][arm] = digest
            row["final"] = {split: {arm: c[-1] for arm, c in row["curves"][split].items()} for split in SPLITS}
            log(json.dumps({"seed": seed, **row["final"]}))
            per_seed.append(row)
    return summarise(per_seed, tuning, args)


def probe(args: argparse.Namespace) -> dict[str, Any]:
    """--probe: each seed's training captions, every arm at the one learning rate, scored after each
    epoch on validation noise (the seeds the learning-rate search uses, never evaluation noise), to
    choose what the bench should run. The seed is the unit: mean and 95 % CI of trained - untrained."""
    pool, _ = splits(args)
    evaluator = Evaluator(args)
    seeds = [VAL_SEED_BASE + k for k in range(args.val_seeds)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        for seed in args.seeds:
            captions = training_captions(pool, seed, args.prompts)
            untrained = evaluator.facts(captions, seeds, None)
            row: dict[str, Any] = {"seed": seed, "untrained": untrained["mean"], "facts": {"untrained": untrained}}
            for arm, (loras, digest) in train_arms(captions, seed, {a: args.lrs[0] for a in ARMS}, args,
                                                   Path(tmp_name)).items():
                row["facts"][arm] = [evaluator.facts(captions, seeds, lora) for lora in loras]
                row[arm] = [f["mean"] for f in row["facts"][arm]]
                row[f"{arm}_jobs"] = digest
            # what the first epoch's fusion job drew: its samples and its fused targets, fact by fact
            row["first_epoch_images"] = epoch_image_facts(job_dir(Path(tmp_name), seed, "fusion", args.lrs[0]), captions)
            log(json.dumps({k: row[k] for k in ("seed", "untrained", *ARMS)}))
            rows.append(row)
    diffs = {arm: mean_ci([r[arm][-1] - r["untrained"] for r in rows]) for arm in ARMS}
    pooled = {kind: conditional_rates(np.concatenate([r["first_epoch_images"][kind] for r in rows]))
              for kind in ("samples", "targets")}
    for r in rows:
        r["first_epoch_images"] = {k: len(v) for k, v in r["first_epoch_images"].items()}
    return {"validation_differences": diffs, "first_epoch_image_facts": pooled, "per_seed": rows,
            "config": args_record(args)}


def epoch_image_facts(folder: Path, captions: list[str]) -> dict[str, np.ndarray]:
    """caption_facts [N, 5] of a job's first-epoch samples and fused targets, read from its run folder."""
    out = {}
    for kind, pattern in (("samples", "e0/images/*.png"), ("targets", "e0/pairs/*.target.png")):
        rows = []
        for path in sorted(folder.glob(pattern)):
            prompt = int(path.name.split("-")[1].removeprefix("p"))
            rows.append(toy_scorer.caption_facts(np.asarray(Image.open(path).convert("RGB")), captions[prompt]))
        out[kind] = np.asarray(rows, float).reshape(-1, len(FACTS))
    return out


def summarise(per_seed: list[dict[str, Any]], tuning: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for split in SPLITS:
        out[split] = {
            "differences": {f"{a}-{b}": mean_ci([r["final"][split][a] - r["final"][split][b] for r in per_seed])
                            for a, b in DIFFERENCES},
            # score after each epoch per arm, mean and 95 % CI over seeds (the band of the figure)
            "curves": {arm: [mean_ci([r["curves"][split][arm][e] for r in per_seed]) for e in range(args.epochs + 1)]
                       for arm in ("none", *ARMS)},
        }
    out["tuning"] = tuning
    out["per_seed"] = per_seed
    out["config"] = args_record(args)
    out["eval_samples_per_arm"] = {"train_captions": args.prompts * args.train_eval_seeds,
                                   "heldout": len(splits(args)[1]) * args.eval_seeds}
    return out


def difference_line(name: str, ci: dict[str, float], prefix: str = "") -> str:
    return f"{prefix}paired difference {name}: {ci['mean']:+.3f} (95% CI {ci['lo']:+.3f} to {ci['hi']:+.3f})"


COLOURS = {"none": "#777777", "plain": "#3b75af", "fusion": "#d0554a"}


def svg_plot(summary: dict[str, Any], seeds: int) -> str:
    """Two panels, training captions and held-out: mean score against epoch per arm, with its 95 %
    CI over seeds as a band, as the paper's figure plots score against training."""
    pw, ph, left, top, gap = 300, 220, 52, 46, 70
    w, h = left + 2 * pw + gap + 20, top + ph + 70
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<text x="{w / 2}" y="18" text-anchor="middle">toy world: mean score after each epoch, '
           f'95% CI over {seeds} seeds</text>']
    for p, (split, title) in enumerate((("train_captions", "training captions, fresh noise"),
                                        ("heldout", "held-out captions"))):
        curves = summary[split]["curves"]
        x0 = left + p * (pw + gap)
        vals = [v for c in curves.values() for pt in c for v in (pt["lo"], pt["hi"], pt["mean"]) if v == v]
        lo, hi = min(vals), max(vals)
        pad = max(0.01, (hi - lo) * 0.1)
        lo, hi = lo - pad, hi + pad
        epochs = len(next(iter(curves.values()))) - 1
        span = max(1, epochs)
        x = lambda e, x0=x0, span=span: x0 + pw * e / span  # noqa: E731
        y = lambda v, lo=lo, hi=hi: top + ph * (hi - v) / (hi - lo)  # noqa: E731
        out.append(f'<text x="{x0 + pw / 2}" y="{top - 10}" text-anchor="middle">{title}</text>')
        out.append(f'<rect x="{x0}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="black"/>')
        for k in range(5):
            v = lo + (hi - lo) * k / 4
            out.append(f'<text x="{x0 - 4}" y="{y(v) + 4}" text-anchor="end">{v:.2f}</text>')
        for e in range(epochs + 1):
            out.append(f'<text x="{x(e)}" y="{top + ph + 16}" text-anchor="middle">{e}</text>')
        out.append(f'<text x="{x0 + pw / 2}" y="{top + ph + 34}" text-anchor="middle">epoch</text>')
        if p == 0:
            out.append(f'<text x="14" y="{top + ph / 2}" text-anchor="middle" '
                       f'transform="rotate(-90 14 {top + ph / 2})">mean toy score</text>')
        for arm, pts in curves.items():
            band = [(x(e), y(pt["hi"] if pt["hi"] == pt["hi"] else pt["mean"])) for e, pt in enumerate(pts)]
            band += [(x(e), y(pt["lo"] if pt["lo"] == pt["lo"] else pt["mean"])) for e, pt in reversed(list(enumerate(pts)))]
            out.append(f'<polygon points="{" ".join(f"{a:.1f},{b:.1f}" for a, b in band)}" '
                       f'fill="{COLOURS[arm]}" fill-opacity="0.15" stroke="none"/>')
            line = " ".join(f"{x(e):.1f},{y(pt['mean']):.1f}" for e, pt in enumerate(pts))
            out.append(f'<polyline points="{line}" fill="none" stroke="{COLOURS[arm]}" stroke-width="2"/>')
    for k, arm in enumerate(("none", *ARMS)):
        lx = left + k * 110
        out.append(f'<rect x="{lx}" y="{h - 18}" width="14" height="4" fill="{COLOURS[arm]}"/>')
        out.append(f'<text x="{lx + 20}" y="{h - 12}">{arm}</text>')
    out.append("</svg>")
    return "\n".join(out)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def args_record(args: argparse.Namespace) -> dict[str, Any]:
    """The run's arguments as JSON values, kept beside its results (summary.json, probe.json)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


def json_object(text: str) -> dict[str, Any]:
    """An argparse type: a JSON object (settings by name)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from e
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"a JSON object of settings is needed, got {text!r}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # 8: one seed (one training run) is the unit, and runs differ by about 0.03 between seeds
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    p.add_argument("--prompts", type=int, default=6, help="training captions per job")
    p.add_argument("--val-seeds", type=int, default=16,
                   help="validation seeds per caption (learning-rate search; 4 gave ties at 24 samples)")
    p.add_argument("--samples", type=int, default=tw.TOY_SAMPLES_PER_PROMPT,
                   help="samples per caption per epoch (multiple of 4; default: the toy preset's)")
    p.add_argument("--epochs", type=int, default=TOY_JOB["epochs"], help="default: the toy preset's")
    p.add_argument("--steps", type=int, default=tw.TOY_SAMPLING["num_steps"],
                   help="DDIM steps for sampling, fusion, training and evaluation")
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--batch", type=int, default=8, help="samples per UNet call in the jobs")
    p.add_argument("--eval-batch", type=int, default=32, help="samples per UNet call in the evaluation")
    p.add_argument("--batch-pairs", type=int, default=tw.TOY_TRAINING["batch_pairs"], help="pairs per optimizer step")
    p.add_argument("--steps-per-epoch", type=int, default=tw.TOY_TRAINING["steps_per_epoch"],
                   help="optimizer steps per epoch of the fusion arm, under --max-passes; the plain arm takes as many")
    p.add_argument("--max-passes", type=float, default=tw.TOY_TRAINING.get("max_passes"),
                   help="at most this many passes over the pairs the fusion arm kept (default: the toy preset's)")
    p.add_argument("--skip-last-steps", type=int, default=2,
                   help="final denoising steps left out of trajectory DPO's loss (their log-ratios dwarf the rest)")
    p.add_argument("--algorithm", default=tw.TOY_TRAINING["algorithm"], choices=["trajectory_dpo", "diffusion_dpo"],
                   help="the preference loss of both trained arms (its beta: the algorithm's default)")
    # the toy preset's, chosen on validation noise (bench/RESULTS.md); give two or more to search per arm
    p.add_argument("--lrs", type=float, nargs="+", default=[tw.TOY_TRAINING["learning_rate"]],
                   help="learning rates searched per arm on the validation split (one value: no search)")
    p.add_argument("--eval-prompts", type=int, default=22, help="held-out captions scored (22 = all)")
    p.add_argument("--eval-seeds", type=int, default=8, help="evaluation seeds per held-out caption")
    p.add_argument("--train-eval-seeds", type=int, default=16, help="fresh seeds per training caption")
    p.add_argument("--training", type=json_object, default={}, metavar="JSON",
                   help='more training settings for both arms, e.g. \'{"beta": 1000}\'')
    p.add_argument("--fusion", type=json_object, default={}, metavar="JSON",
                   help='fusion settings over the toy preset, e.g. \'{"mask_level": 0.75}\'')
    p.add_argument("--probe", action="store_true",
                   help="score every arm at --lrs[0] on validation noise after each epoch, for --seeds (use seeds "
                        "the reported run does not, e.g. 100 101); writes probe.json under --out")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "alignment")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    if args.probe:
        result = probe(args)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "probe.json").write_text(json.dumps(result, indent=2))
        for kind, rates in result["first_epoch_image_facts"].items():
            print(f"first-epoch fusion job, {kind}: " + " ".join(f"{k} {v:.2f}" for k, v in rates.items()))
        for arm, ci in result["validation_differences"].items():
            print(f"validation {arm}-none: {ci['mean']:+.3f} (95% CI {ci['lo']:+.3f} to {ci['hi']:+.3f}, "
                  f"{len(args.seeds)} seeds), {time.time() - t0:.0f} s")
        return result
    summary = run(args)
    summary["wall_s"] = round(time.time() - t0, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    (args.out / "alignment.svg").write_text(svg_plot(summary, len(args.seeds)))
    for name, ci in summary["train_captions"]["differences"].items():  # primary: the captions trained on, fresh noise
        print(difference_line(name, ci))
    for name, ci in summary["heldout"]["differences"].items():
        print(difference_line(name, ci, prefix="held-out "))
    print(json.dumps({split: {k: round(v["mean"], 4) for k, v in summary[split]["differences"].items()}
                      for split in SPLITS} | {"wall_s": summary["wall_s"]}))
    return summary


if __name__ == "__main__":
    main()
