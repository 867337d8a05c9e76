"""dfusion stack up | down | status [--json]: Redis, SeaweedFS, the API and one worker per queue.

`up` returns once the stack is usable (Redis answers, S3 stores, the API is ready, every queue has
a worker), like `docker compose up --wait`; after `--timeout` it exits 1 naming what is not up.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

DEFAULT_ROOT = Path(".stack")
DEFAULT_TIMEOUT_S = 300.0  # four workers importing torch on 2 busy cores take a minute or two


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="state, logs and data (default: .stack)")
    p.add_argument("--json", action="store_true", help="machine-readable status")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                   help=f"up: how long to wait for every service to be healthy (default {DEFAULT_TIMEOUT_S:g})")
    p.add_argument("--no-wait", dest="wait", action="store_false",
                   help="up: return once the processes are started, healthy or not")


def run(args: argparse.Namespace) -> int:
    from devstack.health import ServiceHealth, StackNotReady
    from devstack.stack import stack_down, stack_facts, stack_health, stack_status, stack_up, stack_wait
    from services.settings import get_settings

    root = args.root.resolve()
    # the probes poll until services answer: their per-request and retry lines are noise here
    for name in ("httpx", "urllib3"):
        logging.getLogger(name).setLevel(logging.ERROR)
    health: list[ServiceHealth] = []
    if args.action == "up":
        stack_up(get_settings(), root)
        if args.wait:
            print(f"dfusion stack up: waiting up to {args.timeout:g}s for Redis, S3, the API and a worker on "
                  "every queue", file=sys.stderr)
            try:
                health = stack_wait(root, args.timeout)
            except StackNotReady as e:
                down = "dfusion stack down" + ("" if args.root == DEFAULT_ROOT else f" --root {args.root}")
                print(f"dfusion stack up: {e}; the rest keeps running (`{down}` stops it)", file=sys.stderr)
                return 1
        procs = stack_status(root)
    elif args.action == "down":
        procs = stack_down(root)
    else:
        procs = stack_status(root)
        health = stack_health(root) if procs else []
    if args.json:
        facts = stack_facts(root) if args.action != "down" else {}
        facts = {k: v for k, v in facts.items() if "secret" not in k}
        print(json.dumps({"processes": [dataclasses.asdict(p) for p in procs], "facts": facts,
                          "health": [dataclasses.asdict(h) for h in health]}))
        return 0
    for p in procs:
        print(f"{p.name:<14} pid {p.pid or '-':>7}  {'alive' if p.alive else 'dead':<5}  {','.join(p.queues)}")
    for h in health:
        print(f"{h.name:<14} {'healthy' if h.healthy else 'UNHEALTHY':<9}  {h.detail}")
    return 0
