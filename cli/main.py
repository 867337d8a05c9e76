"""`dfusion` entry point: one subcommand per module, each imported only when run
(so `dfusion submit` never loads torch)."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from dfusion_core.quiet import quiet_third_party

# subcommand -> (module, help)
COMMANDS: dict[str, tuple[str, str]] = {
    "golden-check": ("cli.golden", "check parity with the authors' code on a golden case"),
    "run": ("cli.run", "run a whole job in this process (local files, no Redis)"),
    "demo": ("cli.demo", "run a whole job on the shipped toy model, before and after training"),
    "worker": ("cli.worker", "start a Celery worker for some queues"),
    "stack": ("cli.stack", "start/stop/inspect the local development stack"),
    "token": ("cli.token", "manage API tokens: dfusion token create --tenant NAME"),
    "submit": ("cli.submit", "submit PROMPTS.jsonl to the API; prints the job id"),
    "watch": ("cli.watch", "progress bars per stage until a job ends"),
    "pairs": ("cli.pairs", "download a job's pairs (base, reference, target, mask) into a folder"),
    "checkpoint": ("cli.checkpoint", "download a policy version's LoRA weights"),
    "export": ("cli.export", "a job's pairs as a Parquet DPO dataset (datasets.load_dataset-ready)"),
    "purge": ("cli.purge", "remove ended jobs' objects and keys: dfusion purge JOB, or --expired"),
    "compare": ("cli.compare", "a finished job's trained policy beside its base on the same noise, as a PNG"),
}


def build_parser() -> argparse.ArgumentParser:
    quiet_third_party()
    parser = argparse.ArgumentParser(prog="dfusion", description="D-Fusion alignment of text-to-image models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from dfusion_core.errors import DFusionError

    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except DFusionError as exc:
        print(f"dfusion {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
