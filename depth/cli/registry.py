"""`depth register`: a model as a version of a registered model, linked to its
LoggedModel, with its depth tags and summary."""

from __future__ import annotations

import sys

from jsonargparse import ArgumentParser, Namespace

from depth.cli import checks
from depth.cli.common import one_line


def declare_register(p: ArgumentParser) -> None:
    p.add_argument("source", type=str, help="A checkpoint file (its record published to the "
                   "store), runs:/RUN_ID (the run's latest checkpoint), models:/NAME/VERSION, "
                   "models:/NAME@ALIAS, or m-MODEL_ID.")
    p.add_argument("name", type=str, help="The registered model (created if new).")
    p.add_argument("--tracking-uri", type=str, default=None,
                   help="The MLflow store (default: MLFLOW_TRACKING_URI, else "
                   "sqlite:///mlruns/mlflow.db).")
    p.add_argument("--trust", action="store_true",
                   help="Load Python objects stored in the checkpoint (runs code from it).")


def run_register(args: Namespace) -> int:
    """`depth register`: prints the new version and where its page is."""
    from depth.tracking.registry import register_source

    checks.tracking_uri("tracking-uri", args.tracking_uri)
    try:
        made = register_source(args.source, args.name, args.tracking_uri, args.trust)
    except (OSError, ValueError) as err:
        print(f"depth register: {one_line(err)}", file=sys.stderr)
        return 2
    print(f"depth register: {made.name} version {made.version} <- LoggedModel {made.model_id}")
    print(f"  source   models:/{made.name}/{made.version}")
    print(f"  page     {made.link}")
    return 0
