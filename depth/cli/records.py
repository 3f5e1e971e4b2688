"""`depth verify`, `depth provenance` and `depth card`: a model's energy record."""

from __future__ import annotations

import json
import sys

from jsonargparse import ArgumentParser, Namespace

from depth.cli import checks

# ----------------------------------------------------------------------------- verify

def declare_verify(p: ArgumentParser) -> None:
    p.add_argument("checkpoint", type=str, help="A Lightning checkpoint file with a depth record.")
    p.add_argument("--trust", action="store_true",
                   help="Load Python objects stored in the file (runs code from it).")


def run_verify(args: Namespace) -> int:
    """`depth verify`: 0 when weights and record match, 1 on a mismatch, 2 if unreadable."""
    from depth.record.verify import verify_checkpoint

    verdict = verify_checkpoint(args.checkpoint, trust=args.trust)
    stream = sys.stdout if verdict.status == 0 else sys.stderr
    print(("OK " if verdict.status == 0 else "FAILED ") + verdict.reason, file=stream)
    return verdict.status


# ----------------------------------------------------------------------------- provenance

def declare_provenance(p: ArgumentParser) -> None:
    p.add_argument("source", type=str, help="A checkpoint file, runs:/RUN_ID, "
                   "models:/NAME/VERSION, models:/NAME@ALIAS, or m-MODEL_ID.")
    p.add_argument("--json", action="store_true", help="Print the record as JSON.")
    p.add_argument("--tracking-uri", type=str, default=None,
                   help="MLflow store for runs:/ and models:/ sources (default: "
                   "MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db).")
    p.add_argument("--trust", action="store_true",
                   help="Load Python objects stored in the file (runs code from it).")


def run_provenance(args: Namespace) -> int:
    """`depth provenance`: the energy record of a model, as a table or JSON."""
    from depth.record.uncertainty import measurement_label
    from depth.tracking.sources import read_provenance

    checks.tracking_uri("tracking-uri", args.tracking_uri)
    try:
        record = read_provenance(args.source, tracking_uri=args.tracking_uri, trust=args.trust)
    except (OSError, ValueError) as err:
        print(f"depth provenance: {err}", file=sys.stderr)
        return 2
    data = record.to_dict()
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    tokens = "unknown" if record.train_tokens is None else f"{record.train_tokens:,}"
    unmeasured = "unmeasured (no valid reading: missing, not 0)"
    rows = [("train energy", unmeasured if record.unmeasured else
             f"{record.train_joules:,.1f} J ({record.train_kwh:.6g} kWh)"),
            ("depth (+ parents)", unmeasured if record.unmeasured else
             f"{record.depth_joules:,.1f} J ({record.depth_joules / 3.6e6:.6g} kWh)"),
            ("optimizer steps", f"{record.optimizer_steps:,}"), ("training tokens", tokens),
            ("wasted (included)", f"{record.wasted_joules:,.1f} J"),
            ("method", f"{record.method} ({measurement_label(record.method, record.measured)})"),
            ("uncertainty", "unknown (a meter without a known bound)" if not record.uncertainty
             else f"+/-{record.uncertainty['relative']:.0%} "
                  f"(+/-{record.uncertainty['joules']:,.1f} J; assumed per method, not "
                  "measured here)"),
            ("sync", record.sync), ("weights sha256", record.weights_sha256 or "-"),
            ("created", record.created), ("schema", record.schema)]
    print(f"depth provenance: {args.source}")
    for name, value in rows:
        print(f"  {name:<18} {value}")
    print("devices")
    for device, joules in record.devices.items():
        print(f"  {device:<24} {joules:>14,.1f} J")
    print("segments")
    print(f"  {'kind':<7} {'steps':>13} {'joules':>14} {'wall s':>9}  {'started':<26} method")
    for seg in record.segments:
        steps = f"{seg['start_step']}-{seg['end_step']}"
        print(f"  {seg['kind']:<7} {steps:>13} {seg['joules']:>14,.1f} {seg['wall_s']:>9.1f}  "
              f"{seg['started']:<26} {seg['method']}")
    for flag in record.flags:
        print(f"  note: {flag}")
    search = _search(args.source, record.record_sha256, args.tracking_uri)
    if search:
        print("search (depth attribute; kept beside the record, not in it)")
        for line in search:
            print(f"  {line}")
    if record.parent:
        from depth.record.lineage import chain

        print("lineage (this model first, then its parent, grandparent, ...)")
        for generation, node in enumerate(chain(record.to_dict())):
            print(f"  {generation:>2}  {node.get('train_joules', 0.0):>14,.1f} J  "
                  f"{node.get('optimizer_steps')!s:>8} steps  {node.get('created')}  "
                  f"weights {str(node.get('weights_sha256'))[:12]}...  {node.get('method')}")
    return 0


# ----------------------------------------------------------------------------- card

def declare_card(p: ArgumentParser) -> None:
    p.add_argument("source", type=str, help="A checkpoint file, runs:/RUN_ID, "
                   "models:/NAME/VERSION, models:/NAME@ALIAS, or m-MODEL_ID.")
    p.add_argument("--output", type=str, default=None,
                   help="Write the YAML block to this file (default: print it).")
    p.add_argument("--force", "--overwrite", action="store_true",
                   help="Replace the --output file when it exists.")
    p.add_argument("--tracking-uri", type=str, default=None,
                   help="MLflow store for runs:/ and models:/ sources.")


def run_card(args: Namespace) -> int:
    """`depth card`: Hugging Face model-card metadata (co2_eq_emissions and depth)."""
    from depth.record.card import card_yaml
    from depth.serving.search_attach import attached_search
    from depth.tracking.sources import read_provenance

    output = checks.output_file("output", args.output, args.force) if args.output else None
    checks.tracking_uri("tracking-uri", args.tracking_uri)
    try:
        record = read_provenance(args.source, tracking_uri=args.tracking_uri)
        text = card_yaml(record, attached_search(args.source, record.record_sha256,
                                                 args.tracking_uri))
    except (OSError, ValueError) as err:
        print(f"depth card: {err}", file=sys.stderr)
        return 2
    if output is not None:
        checks.write_atomically("output", output, text)
        print(f"wrote {output}", file=sys.stderr)
    else:
        print(text, end="")
    return 0


def _search(source: str, record_sha256: str | None, tracking_uri: str | None) -> list[str]:
    """The lines of the search attributed to `source` (none, or one line if unreadable)."""
    from depth.record.search import search_lines
    from depth.serving.search_attach import attached_search

    try:
        return search_lines(attached_search(source, record_sha256, tracking_uri))
    except ValueError as err:  # a damaged search file: the record is still shown
        return [f"unreadable: {' '.join(str(err).split())}"]
