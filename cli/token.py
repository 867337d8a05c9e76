"""dfusion token create --tenant NAME: mint an API token for a tenant; the token is the last line printed.

Only the token's sha256 is stored (in Redis, via services.state.tokens), so this is the one time the
plain token is shown.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    create = sub.add_parser("create", help="create a token for a tenant", description="create a token for a tenant")
    create.add_argument("--tenant", required=True, help="tenant name: 1-128 chars of [A-Za-z0-9_.:-]")


def run(args: argparse.Namespace) -> int:
    from services.settings import get_settings
    from services.state.tokens import open_tokens

    if args.token_command != "create":  # argparse enforces the choice; kept for direct callers
        print(f"unknown action {args.token_command!r}", file=sys.stderr)
        return 2
    token = open_tokens(get_settings().redis_url).create(args.tenant)
    print(f"token for tenant {args.tenant!r} (shown once; send as 'Authorization: Bearer <token>'):", file=sys.stderr)
    print(token)
    return 0
