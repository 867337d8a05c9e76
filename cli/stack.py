"""dfusion stack up | down | status [--json]: Redis, SeaweedFS, the API and one worker per queue."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--root", type=Path, default=Path(".stack"), help="state, logs and data (default: .stack)")
    p.add_argument("--json", action="store_true", help="machine-readable status")


def run(args: argparse.Namespace) -> int:
    from services.settings import get_settings
    from services.stack import stack_down, stack_facts, stack_status, stack_up

    root = args.root.resolve()
    if args.action == "up":
        procs = stack_up(get_settings(), root)
    elif args.action == "down":
        procs = stack_down(root)
    else:
        procs = stack_status(root)
    if args.json:
        facts = stack_facts(root) if args.action != "down" else {}
        facts = {k: v for k, v in facts.items() if "secret" not in k}
        print(json.dumps({"processes": [dataclasses.asdict(p) for p in procs], "facts": facts}))
    else:
        for p in procs:
            print(f"{p.name:<12} pid {p.pid or '-':>7}  {'alive' if p.alive else 'dead':<5}  {','.join(p.queues)}")
    return 0
