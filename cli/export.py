"""dfusion export JOB --out FILE.parquet: the job's pairs as a DPO dataset (one Parquet file).

Columns: pair_id, epoch, policy_version, prompt_index, prompt, winner_image, loser_image, mask
(PNG images as Hugging Face Image features), winner_score (the target's own), loser_score,
reference_score, trained, winner/loser trajectory refs (`bundle key#member`; services/export.py) and sample ids. Load it with `datasets.load_dataset("parquet", data_files=FILE)`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cli.client import Client, _job_path, add_api_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", help="job id (as printed by `dfusion submit`)")
    p.add_argument("--out", type=Path, required=True, help="Parquet file to write (folders created)")
    add_api_arguments(p)


def run(args: argparse.Namespace) -> int:
    with Client.from_args(args) as client:
        size = client.download(f"/jobs/{_job_path(args.job)}/pairs.parquet", args.out, f"job {args.job}")
    print(f"wrote {size} bytes of pairs of job {args.job}", file=sys.stderr)
    print(args.out)
    return 0
