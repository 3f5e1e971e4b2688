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
                   help="Replay into this store (default: MLFLOW_TRACKING_URI, else "
                   "sqlite:///mlruns/mlflow.db). The store a spool file names is never "
                   "contacted: a file recorded for another store is refused, and replayed "
                   "only when this option names exactly that store (user:password@ "
                   "included where it had them).")


def run_sync(args: Namespace) -> int:
    """`depth sync`: replay what a tracking server missed; each event at most once. Exit
    status 0 when replayed, 1 when the server is down or refuses (or another sync holds the
    folder), 2 for a bad spool or one recorded for another store."""
    from depth.tracking.spool import SpoolError, sync_spool

    checks.tracking_uri("tracking-uri", args.tracking_uri)
    try:
        report = sync_spool(args.spool, tracking_uri=args.tracking_uri, progress=progress)
    except SpoolError as err:
        print(f"depth sync: {err}", file=sys.stderr)
        return err.status
    for warning in report.warnings:
        print(f"depth sync: note: {warning}", file=sys.stderr)
    for line in (*report.refused, *report.failed):
        print(f"depth sync: {line}", file=sys.stderr)
    print(f"depth sync: {report.files} spool file(s), {report.replayed} events replayed "
          f"({report.points} metric points), {report.skipped} already replayed before"
          + (f", {report.set_aside} set aside" if report.set_aside else ""))
    return 2 if report.refused else 1 if report.failed else 0
