"""The ``depth`` command.

Each subcommand is a pair: a function that declares its options on a jsonargparse parser
and a function that runs it and returns the exit status. Bad input ends in one line on
stderr naming the option and the fix, exit status 2, never a traceback.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from jsonargparse import ArgumentParser, Namespace


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


class _Parser(ArgumentParser):
    """jsonargparse parser whose errors are one line: what is wrong, and where help is."""

    def error(self, message: str, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        prog = self.prog.replace(" [options]", "")
        text = " ".join(str(message).split())
        print(f"{prog}: {text} (see {prog} --help)", file=sys.stderr)
        raise SystemExit(2)


@dataclass(frozen=True)
class Command:
    """A subcommand: its help line, option declarations, and runner."""

    help: str
    declare: Callable[[ArgumentParser], None]
    run: Callable[[Namespace], int]


def _positive(name: str, value: float) -> float:
    if not value > 0:
        raise UsageError(f"--{name} must be greater than 0 (got {value:g})")
    return value


# ----------------------------------------------------------------------------- meters

def _declare_meters(p: ArgumentParser) -> None:
    from depth.meters import CPU_CHOICES, GPU_CHOICES

    p.add_argument("--seconds", type=float, default=3.0,
                   help="How long to read the meters, in seconds.")
    p.add_argument("--json", action="store_true", help="Print one JSON object instead of tables.")
    p.add_argument("--gpus", type=str, default=None,
                   help="CUDA ordinals to meter, comma-separated (default: every visible GPU).")
    p.add_argument("--gpu", choices=GPU_CHOICES, default="auto",
                   help="GPU source: NVML counter, else power sampling (auto), or one of them.")
    p.add_argument("--cpu", choices=CPU_CHOICES, default="auto",
                   help="CPU/DRAM source: RAPL, else estimate (auto), or one of them.")
    p.add_argument("--powercap-root", type=str, default=None,
                   help="Where RAPL zones live (default /sys/class/powercap).")


def _parse_gpus(text: str | None) -> list[int] | None:
    if text is None or text == "":
        return None
    try:
        gpus = [int(part) for part in text.split(",")]
    except ValueError:
        raise UsageError(f"--gpus takes CUDA ordinals like 0,1 (got {text!r})") from None
    if any(g < 0 for g in gpus):
        raise UsageError(f"--gpus takes non-negative CUDA ordinals (got {text!r})")
    return gpus


def _read_for(meter: Any, seconds: float, progress: TextIO) -> tuple[dict[str, float], float,
                                                                        dict[str, str]]:
    """Reads `meter` over `seconds`; returns joules per device, elapsed s, failures."""
    from depth.meters import MeterReadError

    failures: dict[str, str] = {}

    def read() -> dict[str, float]:
        try:
            return dict(meter.read())
        except MeterReadError as err:
            failures[err.device] = err.reason
            return err.partial

    start_j = read()
    t0 = time.monotonic()
    deadline = t0 + seconds
    tty = progress.isatty()
    print(f"reading for {seconds:g} s ...", file=progress, flush=True)
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 1.0))
        if tty:
            print(f"\r  {max(deadline - time.monotonic(), 0):4.1f} s left", end="", file=progress,
                  flush=True)
    end_j = read()
    elapsed = time.monotonic() - t0
    if tty:
        print("\r" + " " * 20 + "\r", end="", file=progress, flush=True)
    return {d: end_j[d] - start_j[d] for d in end_j if d in start_j}, elapsed, failures


def run_meters(args: Namespace) -> int:
    """`depth meters`: which sources were found and rejected, then a timed reading."""
    from pathlib import Path

    from depth.meters import MeterUnavailable, auto_meter
    from depth.meters.rapl import POWERCAP_ROOT

    seconds = _positive("seconds", args.seconds)
    gpus = _parse_gpus(args.gpus)
    root = Path(args.powercap_root) if args.powercap_root else POWERCAP_ROOT
    try:
        meter = auto_meter(gpus, gpu=args.gpu, cpu=args.cpu, powercap_root=root)
    except MeterUnavailable as err:
        print(f"depth meters: {err}", file=sys.stderr)
        return 1
    try:
        if not args.json:
            _print_sources(meter)
        joules, elapsed, failures = _read_for(meter, seconds, sys.stderr)
    finally:
        meter.close()
    methods = meter.methods()
    devices = {d: {"method": methods[d], "joules": joules[d], "watts": joules[d] / elapsed}
               for d in meter.devices() if d in joules}
    result = {
        "method": meter.method,
        "measured": all(m != "estimate" for m in methods.values()),
        "chosen": [s.to_dict() for s in meter.sources if s.chosen],
        "rejected": [{"method": s.method, "reason": s.reason} for s in meter.rejected],
        "seconds": elapsed,
        "devices": devices,
        "failed": failures,
        "total_joules": sum(d["joules"] for d in devices.values()),
        "flags": meter.flags(),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_reading(result)
    return 0


def _print_sources(meter: Any) -> None:
    print("energy sources")
    for s in meter.sources:
        devices = ", ".join(s.devices) or "-"
        print(f"  {'chosen' if s.chosen else 'rejected':<9} {s.method:<13} {devices:<15} "
              f"{s.reason}")


def _print_reading(result: dict[str, Any]) -> None:
    print(f"\nreading over {result['seconds']:.2f} s")
    print(f"  {'device':<8} {'method':<13} {'joules':>12} {'mean W':>10}")
    for device, d in result["devices"].items():
        print(f"  {device:<8} {d['method']:<13} {d['joules']:>12.3f} {d['watts']:>10.2f}")
    total = result["total_joules"]
    print(f"  {'total':<8} {'':<13} {total:>12.3f} {total / result['seconds']:>10.2f}")
    for device, reason in result["failed"].items():
        print(f"  {device}: read failed: {reason}")
    for flag in result["flags"]:
        print(f"  note: {flag}")
    if not result["measured"]:
        print("  'estimate' rows are CodeCarbon model estimates (TDP x load curve, RAM by size),"
              " not measurements.")


# ----------------------------------------------------------------------------- verify

def _declare_verify(p: ArgumentParser) -> None:
    p.add_argument("checkpoint", type=str, help="A Lightning checkpoint file with a depth record.")
    p.add_argument("--trust", action="store_true",
                   help="Load Python objects stored in the file (runs code from it).")


def run_verify(args: Namespace) -> int:
    """`depth verify`: 0 when weights and record match, 1 on a mismatch, 2 if unreadable."""
    from depth.verify import verify_checkpoint

    verdict = verify_checkpoint(args.checkpoint, trust=args.trust)
    stream = sys.stdout if verdict.status == 0 else sys.stderr
    print(("OK " if verdict.status == 0 else "FAILED ") + verdict.reason, file=stream)
    return verdict.status


# ----------------------------------------------------------------------------- provenance

def _declare_provenance(p: ArgumentParser) -> None:
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
    from depth.provenance import read_provenance

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
    rows = [("train energy", f"{record.train_joules:,.1f} J ({record.train_kwh:.6g} kWh)"),
            ("depth (+ parents)", f"{record.depth_joules:,.1f} J "
                                  f"({record.depth_joules / 3.6e6:.6g} kWh)"),
            ("optimizer steps", f"{record.optimizer_steps:,}"), ("training tokens", tokens),
            ("wasted (included)", f"{record.wasted_joules:,.1f} J"), ("method", record.method),
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
    if record.parent:
        from depth.lineage import chain

        print("lineage (this model first, then its parent, grandparent, ...)")
        for generation, node in enumerate(chain(record.to_dict())):
            print(f"  {generation:>2}  {node.get('train_joules', 0.0):>14,.1f} J  "
                  f"{node.get('optimizer_steps')!s:>8} steps  {node.get('created')}  "
                  f"weights {str(node.get('weights_sha256'))[:12]}...  {node.get('method')}")
    return 0


# ----------------------------------------------------------------------------- card

def _declare_card(p: ArgumentParser) -> None:
    p.add_argument("source", type=str, help="A checkpoint file, runs:/RUN_ID, "
                   "models:/NAME/VERSION, models:/NAME@ALIAS, or m-MODEL_ID.")
    p.add_argument("--output", type=str, default=None,
                   help="Write the YAML block to this file (default: print it).")
    p.add_argument("--tracking-uri", type=str, default=None,
                   help="MLflow store for runs:/ and models:/ sources.")


def run_card(args: Namespace) -> int:
    """`depth card`: Hugging Face model-card metadata (co2_eq_emissions and depth)."""
    from pathlib import Path

    from depth.card import card_yaml
    from depth.provenance import read_provenance

    try:
        text = card_yaml(read_provenance(args.source, tracking_uri=args.tracking_uri))
    except (OSError, ValueError) as err:
        print(f"depth card: {err}", file=sys.stderr)
        return 2
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        print(text, end="")
    return 0


# ----------------------------------------------------------------------------- sync

def _declare_sync(p: ArgumentParser) -> None:
    p.add_argument("spool", type=str, help="A spool folder (depth-spool/ under the trainer's "
                   "root by default) or one of its .jsonl files.")
    p.add_argument("--tracking-uri", type=str, default=None,
                   help="Replay into this store (default: the one each file was meant for).")


def run_sync(args: Namespace) -> int:
    """`depth sync`: replay what a tracking server missed; each event at most once. Exit
    status 0 when replayed, 1 when the server is down or refuses, 2 for a bad spool."""
    from depth.spool import SpoolError, sync_spool

    def progress(line: str) -> None:
        print(f"  {line}", file=sys.stderr)

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


# ----------------------------------------------------------------------------- eval

def _declare_eval(p: ArgumentParser) -> None:
    p.add_argument("source", type=str, help="A checkpoint file, or runs:/RUN_ID, "
                   "models:/NAME/VERSION, m-MODEL_ID when the checkpoint file was logged.")
    p.add_argument("--batch-sizes", type=str, default=None,
                   help="Comma-separated batch sizes (default 1,4,16,64 on a CPU; on a GPU "
                   "x4 up to 1024 or the first that does not fit).")
    p.add_argument("--prompt-tokens", type=int, default=64, help="Prompt length.")
    p.add_argument("--new-tokens", type=int, default=64, help="Tokens generated per sequence.")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default=None,
                   help="Weights and activations (default bf16 on a GPU, fp32 on a CPU).")
    p.add_argument("--repeats", type=int, default=3, help="Measured repeats per batch size.")
    p.add_argument("--min-window-s", type=float, default=0.5,
                   help="Shortest measuring window (NVML's counter refreshes every ~100 ms).")
    p.add_argument("--idle-s", type=float, default=2.0,
                   help="Seconds of idle power measured first (0: no net figures).")
    p.add_argument("--device", type=str, default=None, help="cuda, cuda:1 or cpu.")
    p.add_argument("--meter", type=str, default="auto", help="auto or a meter name.")
    p.add_argument("--hardware", type=str, default=None,
                   help="For the compute ceiling: A100, H100, H200, RTX 4090, RTX 3090, or "
                   "custom:PEAK_TFLOPS:WATTS[:NAME] (default: the GPU's own name).")
    p.add_argument("--temperature-k", type=float, default=300.0,
                   help="Temperature for Landauer's bound.")
    p.add_argument("--loss-batches", type=int, default=8,
                   help="Held-out batches for the model's cross-entropy (0: skip Landauer).")
    p.add_argument("--json", action="store_true", help="Print one JSON object.")
    p.add_argument("--no-log", action="store_true", help="Do not write to MLflow.")
    p.add_argument("--tracking-uri", type=str, default=None, help="The MLflow store.")


def _int_list(name: str, text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise UsageError(f"--{name} takes integers like 1,4,16 (got {text!r})") from None
    if any(v < 1 for v in values):
        raise UsageError(f"--{name} takes positive integers (got {text!r})")
    return values


def run_eval(args: Namespace) -> int:
    """`depth eval`: inference tokens/Wh of a model over a batch-size sweep."""
    import torch

    from depth.evaluation import evaluate
    from depth.inference import EvalConfig, sweep_sizes

    cuda = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    sizes = _int_list("batch-sizes", args.batch_sizes) or sweep_sizes(None, 1024 if cuda else 64)
    try:
        config = EvalConfig(batch_sizes=sizes, prompt_tokens=args.prompt_tokens,
                            new_tokens=args.new_tokens,
                            dtype=args.dtype or ("bf16" if cuda else "fp32"),
                            repeats=args.repeats, min_window_s=args.min_window_s,
                            idle_s=args.idle_s)
    except ValueError as err:
        raise UsageError(str(err)) from None

    def progress(line: str) -> None:
        print(f"  {line}", file=sys.stderr)

    try:
        result = evaluate(args.source, config, device=args.device, meter=args.meter,
                          hardware=args.hardware, temperature_k=args.temperature_k,
                          loss_batches=args.loss_batches, tracking_uri=args.tracking_uri,
                          log=not args.no_log, progress=progress)
    except (OSError, ValueError) as err:
        print(f"depth eval: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    _print_eval(result)
    return 0


def _print_eval(result: dict[str, Any]) -> None:
    measured = "measured" if result["measured"] else "ESTIMATED: no sensor"
    print(f"depth eval: {result['source']}  ({result['device']}, {result['dtype']}, "
          f"{result['method']}, {measured})")
    if result.get("uncertainty"):
        print(f"  uncertainty +/-{result['uncertainty']['relative']:.0%} on every energy figure "
              "(assumed for the method, not measured here)")
    if result["idle_w"] is not None:
        print(f"  idle power {result['idle_w']:.1f} W")
    print(f"  {'batch':>6} {'tokens':>8} {'joules':>10} {'seconds':>9} {'tokens/Wh':>12} "
          f"{'(min-max)':>21} {'net tok/Wh':>11} {'prefill J':>10} {'decode J':>10}")
    for b in result["batches"]:
        low, high = b["tokens_per_wh_spread"]
        net = "-" if b["net_tokens_per_wh"] is None else f"{b['net_tokens_per_wh']:,.0f}"
        print(f"  {b['batch_size']:>6} {b['tokens']:>8} {b['joules']:>10.4g} "
              f"{b['seconds']:>9.4f} {b['tokens_per_wh']:>12,.0f} "
              f"{f'{low:,.0f}-{high:,.0f}':>21} {net:>11} {b['prefill_joules']:>10.4g} "
              f"{b['decode_joules']:>10.4g}")
    if result.get("stopped"):
        print(f"  sweep stopped: {result['stopped']}")
    phys = result["physics"]
    print(f"  best: batch {result['best_batch_size']}, {result['tokens_per_wh']:,.0f} tokens/Wh,"
          f" {result['joules_per_token']:.4g} J/token, "
          f"{phys['wh_per_million_tokens']:.4g} Wh per million tokens")
    if "ceiling_fraction" in phys:
        print(f"  compute ceiling on {phys['hardware']}: {phys['ceiling_tokens_per_wh']:,.0f} "
              f"tokens/Wh; achieved {phys['ceiling_fraction']:.1%}")
    else:
        print("  compute ceiling: no hardware figure (give --hardware, e.g. "
              "custom:PEAK_TFLOPS:WATTS for a CPU)")
    if phys.get("landauer_ratio"):
        print(f"  Landauer: {phys['bits_removed_per_token']:.2f} bits removed per token "
              f"(held-out loss {phys['held_out_loss_nats']:.3f} nats), bound "
              f"{phys['landauer_j_per_token']:.3g} J/token; measured is "
              f"{phys['landauer_ratio']:.3g} times that")
    print(f"  break-even: after {result['break_even_tokens']:,.0f} served tokens, serving has "
          f"used as much energy as training ({result['depth_joules']:,.1f} J)")
    where = (f"logged on LoggedModel {result['logged_model']}" if result["logged_model"]
             else "not logged to MLflow (no LoggedModel found for this checkpoint)")
    print(f"  {where}" + (f"; written to {result['written']}" if result.get("written") else ""))


# ----------------------------------------------------------------------------- amortize

def _declare_amortize(p: ArgumentParser) -> None:
    p.add_argument("source", type=str, help="A checkpoint file, runs:/, models:/ or m-.")
    p.add_argument("--served-tokens", type=float, default=None, help="Tokens served in all.")
    p.add_argument("--tokens-per-day", type=float, default=None, help="Serving rate.")
    p.add_argument("--days", type=float, default=None, help="Horizon, with --tokens-per-day.")
    p.add_argument("--joules-per-token", type=float, default=None,
                   help="Inference J/token (default: what `depth eval` measured).")
    p.add_argument("--json", action="store_true", help="Print one JSON object.")
    p.add_argument("--no-log", action="store_true", help="Do not write to MLflow.")
    p.add_argument("--tracking-uri", type=str, default=None, help="The MLflow store.")


def run_amortize(args: Namespace) -> int:
    """`depth amortize`: training energy over served tokens, and the break-even."""
    from depth.evaluation import amortize_source

    if args.served_tokens is None and (args.tokens_per_day is None or args.days is None):
        raise UsageError("give --served-tokens N, or --tokens-per-day R with --days D")
    for name in ("served_tokens", "tokens_per_day", "days", "joules_per_token"):
        value = getattr(args, name)
        if value is not None:
            _positive(name.replace("_", "-"), value)
    try:
        result = amortize_source(args.source, args.served_tokens, args.tokens_per_day,
                                 args.days, args.joules_per_token, args.tracking_uri,
                                 log=not args.no_log)
    except (OSError, ValueError) as err:
        print(f"depth amortize: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"depth amortize: {args.source}")
    rows = [("depth (training, with parents)", f"{result['depth_joules']:,.1f} J"),
            ("inference", f"{result['inference_j_per_token']:.4g} J/token "
                          f"({result['inference_from']})"),
            ("served tokens", f"{result['served_tokens']:,.0f}"),
            ("amortized", f"{result['amortized_j_per_token']:.4g} J/token "
                          f"({result['training_share']:.1%} of it training)"),
            ("break-even", f"{result['break_even_tokens']:,.0f} served tokens"
             + (f" = {result['break_even_days']:,.1f} days at the given rate"
                if result["break_even_days"] is not None else "")),
            ("method", result["method"])]
    for name, value in rows:
        print(f"  {name:<31} {value}")
    return 0


# ----------------------------------------------------------------------------- report

def _declare_report(p: ArgumentParser) -> None:
    p.add_argument("--experiment", type=str, default="depth", help="The MLflow experiment.")
    p.add_argument("--out", type=str, default=None,
                   help="Folder for the PNGs and models.csv (default reports/EXPERIMENT).")
    p.add_argument("--all-checkpoints", action="store_true",
                   help="One row per checkpoint, not per run.")
    p.add_argument("--json", action="store_true", help="Print the rows as JSON.")
    p.add_argument("--no-log", action="store_true", help="Do not log the plots to MLflow.")
    p.add_argument("--tracking-uri", type=str, default=None, help="The MLflow store.")


def run_report(args: Namespace) -> int:
    """`depth report`: every model of an experiment, one table and three plots."""
    from pathlib import Path

    from depth.report import format_table, make_report
    from depth.tracking import default_tracking_uri

    uri = args.tracking_uri or default_tracking_uri()
    out = Path(args.out or Path("reports") / args.experiment)
    try:
        report = make_report(args.experiment, uri, out, args.all_checkpoints,
                             log=not args.no_log)
    except ValueError as err:
        print(f"depth report: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.rows, indent=2))
        return 0
    from depth.tracking import redact

    print(f"depth report: experiment {args.experiment!r} at {redact(uri)}")
    print(format_table(report.rows))
    print("\nwritten: " + ", ".join(str(p) for p in report.files))
    if report.run_id:
        print(f"logged to run {report.run_id} (artifacts depth-report/)")
    return 0


# ----------------------------------------------------------------------------- train, run

def _declare_train(p: ArgumentParser) -> None:
    from depth.recipe import declare

    declare(p)


def _recipe_of(args: Namespace) -> Any:
    from depth.recipe import declare, to_recipe

    parser = ArgumentParser(exit_on_error=False)
    declare(parser)
    try:
        return to_recipe(parser, args)
    except (TypeError, ValueError) as err:
        raise UsageError(" ".join(str(err).split())) from None


def _train(recipe: Any) -> Any:
    from depth.train import train

    try:
        return train(recipe)
    except ValueError as err:  # data or recipe problems found once the data is read
        raise UsageError(" ".join(str(err).split())) from None


def run_train(args: Namespace) -> int:
    """`depth train RECIPE [--field value ...]`: train a recipe with depth measuring."""
    result = _train(_recipe_of(args))
    _print_training(result)
    return 0


def _print_training(result: Any, extra: Sequence[tuple[str, str]] = ()) -> None:
    record = result.record
    joules = record["train_joules"]
    measured = "estimate" not in record["method"].split("+")
    tokens = record["segments"][-1].get("tokens") or 0
    fit_joules = record["segments"][-1]["joules"]
    rows = [
        ("checkpoint", result.checkpoint),
        ("training energy", f"{joules:,.1f} J = {joules / 3.6e6:.6f} kWh"),
        ("depth (with parents)", f"{record.get('depth_joules', joules):,.1f} J"),
        ("parameters", f"{result.parameters:,}"),
        ("joules per parameter", f"{joules / result.parameters:.3g} J/param"),
        ("training tokens", f"{record.get('train_tokens') or 0:,}"),
        ("training tokens per Wh", f"{tokens / (fit_joules / 3600):,.0f}" if fit_joules else "-"),
        ("throughput", f"{result.tokens_per_s:,.0f} tokens/s over {result.wall_s:.1f} s"),
        ("validation loss",
         "-" if result.val_loss is None else f"{result.val_loss:.3f} nats/token"),
        ("method", f"{record['method']} ({'measured' if measured else 'ESTIMATED: no sensor'})"),
        *extra,
    ]
    for name, value in rows:
        print(f"  {name:<24} {value}")


def _ui_command(uri: str | None) -> str:
    if uri is None:
        return "(no MLflow store: tracking was off)"
    if uri.startswith(("http://", "https://")):
        from depth.tracking import redact

        return f"open {redact(uri)}"
    return f"mlflow ui --backend-store-uri {uri}"


def _declare_run(p: ArgumentParser) -> None:
    from depth.recipe import declare

    declare(p)


def run_run(args: Namespace) -> int:
    """`depth run`: the main job: train the default recipe, evaluate, summarize."""
    recipe = _recipe_of(args)
    print(f"depth run: training recipe {recipe.name!r} "
          f"({'GPU' if recipe.train.accelerator == 'gpu' else recipe.train.accelerator}, "
          f"{recipe.train.max_steps} steps)", file=sys.stderr)
    result = _train(recipe)
    print(f"depth run: measuring inference tokens/Wh of {result.checkpoint}", file=sys.stderr)
    evaluation = _evaluate_trained(recipe, result)
    joules_per_token = evaluation["joules_per_token"]
    from depth.amortize import amortize

    served = 1e6
    spread = amortize(evaluation["depth_joules"], joules_per_token, served)
    print("\ndepth run: summary")
    _print_training(result, [
        ("inference tokens per Wh", f"{evaluation['tokens_per_wh']:,.0f} at batch "
         f"{evaluation['best_batch_size']} ({evaluation['dtype']}, {evaluation['device']}; "
         f"{evaluation['joules_per_token']:.3g} J/token)"),
        ("break-even served tokens", f"{spread.break_even_tokens:,.0f}: then serving has used "
         "as much energy as training"),
        ("amortized over 1M tokens", f"{spread.amortized_j_per_token:.3g} J/token "
         f"({spread.training_share:.0%} of it training)"),
        ("inference method", f"{evaluation['method']} ("
         f"{'measured' if evaluation['measured'] else 'ESTIMATED: no sensor'})")])
    print(f"\nMLflow UI: {_ui_command(result.tracking_uri)}   (run {result.run_id})")
    return 0


def _evaluate_trained(recipe: Any, result: Any) -> dict[str, Any]:
    """`depth eval` of the checkpoint `depth run` just trained, sized to its context."""
    import torch

    from depth.evaluation import evaluate
    from depth.inference import EvalConfig, sweep_sizes

    cuda = recipe.train.accelerator != "cpu" and torch.cuda.is_available()
    prompt = min(64, recipe.model.block_size // 2)
    config = EvalConfig(batch_sizes=sweep_sizes(None, 1024 if cuda else 64),
                        prompt_tokens=prompt,
                        new_tokens=min(64, recipe.model.block_size - prompt),
                        dtype="bf16" if cuda else "fp32")

    def progress(line: str) -> None:
        print(f"  {line}", file=sys.stderr)

    try:
        return evaluate(result.checkpoint, config, device="cuda" if cuda else "cpu",
                        tracking_uri=result.tracking_uri, log=result.tracking_uri is not None,
                        progress=progress)
    except (OSError, ValueError) as err:
        raise UsageError(" ".join(str(err).split())) from None


def default_recipe() -> str:
    """``gpt2-small`` when a CUDA GPU is present, else ``tiny-cpu``."""
    import torch

    return "gpt2-small" if torch.cuda.is_available() else "tiny-cpu"


def _with_recipe_file(argv: list[str]) -> list[str]:
    """``depth train RECIPE ...`` (and ``depth run [RECIPE] ...``): the recipe becomes
    ``--config FILE`` for jsonargparse, a name resolving to ``recipes/NAME.yaml``."""
    if not argv or argv[0] not in ("train", "run"):
        return argv
    from depth.recipe import recipe_path

    rest = argv[1:]
    if rest and not rest[0].startswith("-"):
        name, rest = rest[0], rest[1:]
    elif argv[0] == "run" and "--config" not in rest and not {"-h", "--help"} & set(rest):
        name = default_recipe()
    else:
        return argv
    try:
        path = recipe_path(name)
    except ValueError as err:
        raise UsageError(str(err)) from None
    return [argv[0], "--config", str(path), *rest]


COMMANDS: dict[str, Command] = {
    "meters": Command("List energy sources found and rejected, then read them.",
                      _declare_meters, run_meters),
    "verify": Command("Check that a checkpoint's weights and energy record match.",
                      _declare_verify, run_verify),
    "provenance": Command("Show the energy record of a checkpoint or MLflow model.",
                          _declare_provenance, run_provenance),
    "card": Command("Write Hugging Face model-card metadata (co2_eq_emissions, energy).",
                    _declare_card, run_card),
    "train": Command("Train a recipe (YAML) with energy measured at every optimizer step.",
                     _declare_train, run_train),
    "run": Command("The main job: train the default recipe (tiny-cpu, or gpt2-small on a "
                   "GPU) and summarize its depth.", _declare_run, run_run),
    "eval": Command("Measure a model's inference tokens per Wh over a batch-size sweep.",
                    _declare_eval, run_eval),
    "amortize": Command("Spread a model's training energy over served tokens; break-even.",
                        _declare_amortize, run_amortize),
    "report": Command("Compare every model of an experiment: one table, three plots.",
                      _declare_report, run_report),
    "sync": Command("Replay energy metrics and records spooled while a tracking server was "
                    "down.", _declare_sync, run_sync),
}


def build_parser(command: str | None = None) -> ArgumentParser:
    """The parser; with `command`, only that subcommand's options are declared (declaring
    the recipe options imports torch and Lightning, seconds that `depth meters` need not
    wait for)."""
    parser = _Parser(prog="depth", description="Measure the thermodynamic depth of trained "
                     "models: training joules against inference tokens per watt-hour.")
    subcommands = parser.add_subcommands(dest="command", required=True)
    for name, spec in COMMANDS.items():
        sub = _Parser(prog=f"depth {name}", description=spec.help)
        if command is None or name == command:
            spec.declare(sub)
        subcommands.add_subcommand(name, sub, help=spec.help)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``depth`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv[0] if argv and argv[0] in COMMANDS else "")
    try:
        argv = _with_recipe_file(argv)
    except UsageError as err:
        print(f"depth {argv[0]}: {err}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command].run(args[args.command])
    except UsageError as err:
        print(f"depth {args.command}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"depth {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
