"""dfusion checkpoint JOB [--version V] --out DIR: download a policy's LoRA weights (default: the latest).

Writes DIR/pytorch_lora_weights.safetensors, the name diffusers' `pipe.load_lora_weights(DIR)`
looks for. Version V is the policy after V epochs of training.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cli.client import ApiError, Client, add_api_arguments

WEIGHTS = "pytorch_lora_weights.safetensors"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", help="job id (as printed by `dfusion submit`)")
    p.add_argument("--version", type=int, default=None, help="policy version (default: the latest stored)")
    p.add_argument("--out", type=Path, required=True, help="folder to write into (created if missing)")
    add_api_arguments(p)


def run(args: argparse.Namespace) -> int:
    with Client.from_args(args) as client:
        checkpoints = {c["version"]: c for c in client.records(args.job, "checkpoints")}
        if not checkpoints:
            status = client.job(args.job)["status"]
            raise ApiError(f"job {args.job} has no checkpoint yet (status: {status}); one is stored after each epoch")
        version = max(checkpoints) if args.version is None else args.version
        if version not in checkpoints:
            have = ", ".join(map(str, sorted(checkpoints)))
            raise ApiError(f"job {args.job} has no checkpoint version {version}; available: {have}")
        dest = args.out / WEIGHTS
        size = client.download(checkpoints[version]["url"], dest, f"checkpoint v{version} of job {args.job}")
    print(f"checkpoint v{version} of job {args.job}: {size} bytes", file=sys.stderr)
    print(dest)
    return 0
