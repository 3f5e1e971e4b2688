"""`depth attribute`: the energy of an experiment's search, kept on the model it found."""

from __future__ import annotations

import json
import sys

from jsonargparse import ArgumentParser, Namespace

from depth.cli import checks
from depth.cli.common import UsageError, one_line


def declare_attribute(p: ArgumentParser) -> None:
    p.add_argument("--experiment", type=str, required=True,
                   help="The MLflow experiment whose runs (all of them: failed, killed and "
                   "discarded ones too) led to the model.")
    p.add_argument("--to", type=str, required=True, help="The model: a checkpoint file, "
                   "runs:/RUN_ID, models:/NAME/VERSION, models:/NAME@ALIAS, or m-MODEL_ID.")
    p.add_argument("--json", action="store_true", help="Print the model's search as JSON.")
    p.add_argument("--no-log", action="store_true",
                   help="Do not write to MLflow (a checkpoint's file is still written).")
    p.add_argument("--tracking-uri", type=str, default=None, help="The MLflow store.")
    p.add_argument("--trust", action="store_true",
                   help="Load Python objects stored in the checkpoint (runs code from it).")


def run_attribute(args: Namespace) -> int:
    """`depth attribute`: sums the experiment's runs into the model's ``search_joules``."""
    from depth.record.search import search_lines
    from depth.serving.search_attach import attribute_search

    checks.tracking_uri("tracking-uri", args.tracking_uri)
    if not args.experiment.strip():
        raise UsageError("--experiment must name an MLflow experiment (see `depth report`)")
    try:
        search = attribute_search(args.experiment, args.to, args.tracking_uri,
                                  log=not args.no_log, trust=args.trust)
    except (OSError, ValueError) as err:
        print(f"depth attribute: {one_line(err)}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(search, indent=2))
        return 0
    print(f"depth attribute: experiment {args.experiment!r} -> {args.to}")
    for line in search_lines(search):
        print(f"  {line}")
    if search["written"]:
        print(f"  written: {search['written']}")
    if search["logged_model"]:
        print(f"  kept on LoggedModel {search['logged_model']} as depth.search_* tags and "
              "metrics (attributing an experiment again replaces its figure)")
    return 0
