"""dfusion pairs JOB --out DIR: every pair's images (base, reference, target, mask) and a pairs.json.

DIR/PAIR_ID/{base,reference,target,mask}.png plus DIR/pairs.json (ids, scores, file names), as
the API lists them; plain pairs have no mask. For a training-ready table use `dfusion export`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cli.client import Client, add_api_arguments

IMAGES = {"base": "base_image_url", "reference": "reference_image_url", "target": "target_image_url",
          "mask": "mask_url"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", help="job id (as printed by `dfusion submit`)")
    p.add_argument("--out", type=Path, required=True, help="folder to write into (created if missing)")
    p.add_argument("--epoch", type=int, default=None, help="only this epoch's pairs")
    add_api_arguments(p)


def run(args: argparse.Namespace) -> int:
    with Client.from_args(args) as client:
        pairs = client.records(args.job, "pairs")
        if args.epoch is not None:
            pairs = [p for p in pairs if p.get("epoch") == args.epoch]
        index = []
        for pair in sorted(pairs, key=lambda p: p["id"]):
            files = {}
            for name, field in IMAGES.items():
                if pair.get(field):
                    dest = args.out / pair["id"] / f"{name}.png"
                    client.download(pair[field], dest, f"{name} image of pair {pair['id']}")
                    files[name] = str(dest.relative_to(args.out))
            keep = {k: v for k, v in pair.items() if k not in IMAGES.values()}
            index.append({**keep, "files": files})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pairs.json").write_text(json.dumps(index, indent=1))
    print(f"wrote {len(index)} pairs of job {args.job} to {args.out}", file=sys.stderr)
    print(args.out / "pairs.json")
    return 0
