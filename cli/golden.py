"""dfusion golden-check DIR: one JSON line of errors; exit 1 when outside tolerance."""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("case", help="folder with golden.json, golden.safetensors, unet.safetensors")


def run(args: argparse.Namespace) -> int:
    from dfusion_core.golden import run_golden, within_tolerance

    result = run_golden(args.case)
    ok = within_tolerance(result)
    print(json.dumps({**result, "ok": ok}))
    return 0 if ok else 1
