"""`depth sync`: replay what a tracking server missed."""

from __future__ import annotations

import sys

from jsonargparse import ArgumentParser, Namespace

from depth.cli import checks
from depth.cli.common import progress


def declare_sync(p: ArgumentParser) -> None:
    p.add_argument("spool", type=str, help="A spool folder (depth-spool/ under the trainer's "
                   "root by default) or one of its .jsonl files.")
    p.add_argument("--tracking-uri", type=str, default=None,
                   help="Replay into this store (default: the one each file was meant for).")


def run_sync(args: Namespace) -> int:
    """`depth sync`: replay what a tracking server missed; each event at most once. Exit
    status 0 when replayed, 1 when the server is down or refuses, 2 for a bad spool."""
    from depth.tracking.spool import SpoolError, sync_spool

    checks.tracking_uri("tracking-uri", args.tracking_uri)
    try:
        report = sync_spool(args.spool, tracking_uri=args.tracking_uri, progress=progress)
    except SpoolError as err:
        print(f"depth sync: {err}", file=sys.stderr)
        return err.status
    for warning in report.warnings:
        print(f"depth sync: note: {warning}", file=sys.stderr)
    print(f"depth sync: {report.files} spool file(s), {report.replayed} events replayed "
          f"({report.points} metric points), {report.skipped} already replayed before")
    return 0
