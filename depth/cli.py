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
        return f"open {uri}"
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
    print("\ndepth run: summary")
    _print_training(result, [
        ("inference tokens per Wh", "not measured: `depth eval` is not in this version yet"),
        ("break-even served tokens", "needs the inference figure")])
    print(f"\nMLflow UI: {_ui_command(result.tracking_uri)}   (run {result.run_id})")
    return 0


def default_recipe() -> str:
    """``gpt2-small`` when a CUDA GPU is present, else ``tiny-cpu``."""
    import torch

    return "gpt2-small" if torch.cuda.is_available() else "tiny-cpu"


def _with_recipe_file(argv: list[str]) -> list[str]:
    """``depth train RECIPE ...`` (and ``depth run [RECIPE] ...``): the recipe becomes
    ``--config FILE`` for jsonargparse, a name resolving to ``recipes/NAME.yaml``."""
    from depth.recipe import recipe_path

    if not argv or argv[0] not in ("train", "run"):
        return argv
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
    "sync": Command("Replay energy metrics and records spooled while a tracking server was "
                    "down.", _declare_sync, run_sync),
}


def build_parser() -> ArgumentParser:
    parser = _Parser(prog="depth", description="Measure the thermodynamic depth of trained "
                     "models: training joules against inference tokens per watt-hour.")
    subcommands = parser.add_subcommands(dest="command", required=True)
    for name, command in COMMANDS.items():
        sub = _Parser(prog=f"depth {name}", description=command.help)
        command.declare(sub)
        subcommands.add_subcommand(name, sub, help=command.help)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``depth`` console script."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
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
