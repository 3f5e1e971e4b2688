"""`depth eval`, `depth amortize` and `depth report`: what a model costs to serve,
set against its training energy and physics."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

from jsonargparse import ArgumentParser, Namespace

from depth.cli import checks
from depth.cli.common import UsageError, int_list, one_line, positive, progress, warn_line

# ----------------------------------------------------------------------------- eval

def declare_eval(p: ArgumentParser) -> None:
    p.add_argument("model", type=str, nargs="?", default=None,
                   help="A checkpoint file, or runs:/RUN_ID, models:/NAME/VERSION, "
                   "m-MODEL_ID when the checkpoint file was logged; a Hugging Face model (a "
                   "directory with config.json, or hf:NAME); none with --endpoint.")
    p.add_argument("--model-class", type=str, default=None,
                   help="package.module:Class of your own LightningModule, loaded with "
                   "Class.load_from_checkpoint and run greedily through forward(idx) (default: "
                   "a checkpoint of depth's GPT recipe).")
    p.add_argument("--source", type=str, default=None,
                   help="The trained model the result belongs to (a checkpoint, runs:/, "
                   "models:/ or m-): its record and LoggedModel get the figures (default: the "
                   "model's own record).")
    p.add_argument("--context-tokens", type=int, default=None,
                   help="The model's longest context; longer prompts + new tokens are cropped "
                   "to it (default: block_size or the like, found on the model).")
    p.add_argument("--no-kv-cache", action="store_true",
                   help="Recompute the context every step even if the model offers a KV cache.")
    p.add_argument("--trust", action="store_true",
                   help="Let the checkpoint run the code it pickles (only for files you trust).")
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
    p.add_argument("--max-spread", type=float, default=1.25,
                   help="Largest max/min ratio of a batch's repeats that counts as stable.")
    p.add_argument("--remeasures", type=int, default=2,
                   help="Times an unstable batch size is measured again before it is flagged.")
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
    p.add_argument("--force", action="store_true",
                   help="Attach to --source even a model whose parameter count differs from "
                   "its record's (else refused: probably another model).")
    from depth.cli.endpoint import declare_endpoint

    declare_endpoint(p)


def run_eval(args: Namespace) -> int:
    """`depth eval`: inference tokens/Wh of a model over a batch-size sweep."""
    if args.endpoint is not None:
        from depth.cli.endpoint import run_endpoint

        return run_endpoint(args)
    if args.model is None:
        raise UsageError("give a checkpoint to measure, or --endpoint URL --model-name NAME "
                         "for a running server")
    import torch

    from depth.serving.evaluation import evaluate
    from depth.serving.inference import EvalConfig, sweep_sizes

    _check_eval(args)  # all of it before the model is loaded and measured
    cuda = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    sizes = int_list("batch-sizes", args.batch_sizes) or sweep_sizes(None, 1024 if cuda else 64)
    try:
        config = EvalConfig(batch_sizes=sizes, prompt_tokens=args.prompt_tokens,
                            new_tokens=args.new_tokens,
                            dtype=args.dtype or ("bf16" if cuda else "fp32"),
                            repeats=args.repeats, min_window_s=args.min_window_s,
                            idle_s=args.idle_s, max_spread=args.max_spread,
                            remeasures=args.remeasures)
    except ValueError as err:
        raise UsageError(str(err)) from None

    try:
        result = evaluate(args.model, config, device=args.device, meter=args.meter,
                          hardware=args.hardware, temperature_k=args.temperature_k,
                          loss_batches=args.loss_batches, tracking_uri=args.tracking_uri,
                          log=not args.no_log, progress=progress, trust=args.trust,
                          model_class=args.model_class, attach_to=args.source,
                          context_tokens=args.context_tokens,
                          kv_cache=False if args.no_kv_cache else None,
                          warn=warn_line("eval"), force=args.force,
                          on_start=None if args.json else _heading(args.model, args.source))
    except (OSError, ValueError) as err:
        print(f"depth eval: {one_line(err)}", file=sys.stderr)
        return 2
    except RuntimeError as err:  # a CPU allocation failure is not torch.OutOfMemoryError
        if "allocate" not in str(err):
            raise
        print(f"depth eval: out of memory ({one_line(err)[:160]}); give smaller "
              "--batch-sizes", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    _print_eval(result, heading=False)  # the heading came before the progress lines
    return 0


def _heading(model: str, source: str | None) -> Any:
    """Prints the table's heading as measuring starts: before the progress lines."""
    def show(facts: dict[str, Any]) -> None:
        from depth.serving.table import eval_heading

        print(eval_heading({**facts, "model": model, "source": source or model}), flush=True)

    return show


def _check_eval(args: Namespace) -> None:
    """Every `depth eval` option that can be checked without measuring."""
    from depth.serving import physics
    from depth.serving.inference import MAX_BATCH_SIZE, MAX_WINDOW_S

    checks.device("device", args.device)
    checks.meter("meter", args.meter)
    for name in ("prompt-tokens", "new-tokens", "repeats"):
        checks.at_least(name, getattr(args, name.replace("-", "_")), 1)
    for name in ("remeasures", "loss-batches"):
        checks.at_least(name, getattr(args, name.replace("-", "_")), 0)
    if not (math.isfinite(args.max_spread) and args.max_spread > 1):
        raise UsageError(f"--max-spread takes a max/min ratio above 1, e.g. 1.25 (got "
                         f"{args.max_spread:g})")
    checks.bounded("min-window-s", args.min_window_s, 0.0, MAX_WINDOW_S, " s")
    checks.bounded("idle-s", args.idle_s, 0.0, MAX_WINDOW_S, " s")
    positive("temperature-k", args.temperature_k)  # else refused only after measuring
    sizes = int_list("batch-sizes", args.batch_sizes) or []
    if sizes and max(sizes) > MAX_BATCH_SIZE:
        raise UsageError(f"--batch-sizes go up to {MAX_BATCH_SIZE:,} (got {max(sizes):,})")
    if args.hardware:
        try:
            physics.hardware(args.hardware)
        except ValueError as err:
            raise UsageError(f"--hardware: {one_line(err)}") from None
    uri = checks.tracking_uri("tracking-uri", args.tracking_uri)
    if uri is not None and not args.no_log:  # a result that could not be logged: say so now
        from depth.serving.attach import check_reachable

        try:
            check_reachable(uri)
        except ValueError as err:
            raise UsageError(one_line(err)) from None
    if args.context_tokens is not None and args.context_tokens < 1:
        raise UsageError(f"--context-tokens must be >= 1 (got {args.context_tokens})")
    if args.model_class is not None:
        from depth.serving.models import import_class

        try:  # a typo in the class fails before the checkpoint is read
            import_class(args.model_class)
        except ValueError as err:
            raise UsageError(one_line(err)) from None


def _print_eval(result: dict[str, Any], heading: bool = True) -> None:
    from depth.serving.table import format_eval

    print(format_eval(result, heading))


# ----------------------------------------------------------------------------- amortize

def declare_amortize(p: ArgumentParser) -> None:
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
    from depth.serving.evaluation import amortize_source

    if args.served_tokens is None and (args.tokens_per_day is None or args.days is None):
        raise UsageError("give --served-tokens N, or --tokens-per-day R with --days D")
    if args.served_tokens is not None and args.days is not None:  # else --days is ignored
        raise UsageError("give --served-tokens, or --tokens-per-day with --days, not both "
                         "(--tokens-per-day alone may go with --served-tokens: it dates the "
                         "break-even)")
    checks.tracking_uri("tracking-uri", args.tracking_uri)
    for name in ("served_tokens", "tokens_per_day", "days", "joules_per_token"):
        value = getattr(args, name)
        if value is not None:
            positive(name.replace("_", "-"), value)
    try:
        result = amortize_source(args.source, args.served_tokens, args.tokens_per_day,
                                 args.days, args.joules_per_token, args.tracking_uri,
                                 log=not args.no_log)
    except (OSError, ValueError) as err:
        print(f"depth amortize: {one_line(err)}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"depth amortize: {args.source}")
    rows = [("depth (training, with parents)", f"{result['depth_joules']:,.1f} J"),
            ("inference", f"{result['inference_j_per_token']:.4g} J/token "
                          + ("(SUPPLIED with --joules-per-token, not measured)"
                             if result["inference_source"] == "supplied" else
                             f"({result['inference_source']} by depth eval: "
                             f"{result['inference_from']})")),
            ("served tokens", f"{result['served_tokens']:,.0f}"),
            ("amortized", f"{result['amortized_j_per_token']:.4g} J/token "
                          f"({result['training_share']:.1%} of it training)"),
            ("break-even", f"{result['break_even_tokens']:,.0f} served tokens"
             + (f" = {result['break_even_duration']} at the given rate"
                if result["break_even_duration"] is not None else "")),
            ("method", result["method"])]
    for name, value in rows:
        print(f"  {name:<31} {value}")
    if result["logged_model"]:
        print(f"  kept on LoggedModel {result['logged_model']} as depth.amortize.* tags "
              "(replacing the previous scenario)")
    return 0


# ----------------------------------------------------------------------------- report

def declare_report(p: ArgumentParser) -> None:
    p.add_argument("--experiment", type=str, action="append", default=None,
                   help="The MLflow experiment (default depth); repeat it for several.")
    p.add_argument("--registered-model", type=str, default=None,
                   help="Every version of this registered model instead (one row each, "
                   "named models:/NAME/VERSION).")
    p.add_argument("--out", type=str, default=None,
                   help="Folder for the PNGs and models.csv (default reports/EXPERIMENT, "
                   "or reports/NAME for a registered model).")
    p.add_argument("--all-checkpoints", action="store_true",
                   help="One row per checkpoint, not per run.")
    p.add_argument("--json", action="store_true", help="Print the rows as JSON.")
    p.add_argument("--no-log", action="store_true", help="Do not log the plots to MLflow.")
    p.add_argument("--tracking-uri", type=str, default=None, help="The MLflow store.")
    p.add_argument("--keep", type=str, default=None,
                   help="Models kept from the search besides the registered and attributed "
                   "ones: LoggedModel ids, comma-separated (m-ID,m-ID).")


def run_report(args: Namespace) -> int:
    """`depth report`: every model of an experiment, one table and three plots."""
    from pathlib import Path

    from depth.serving.report import format_table, make_report
    from depth.tracking.store import default_tracking_uri

    checks.tracking_uri("tracking-uri", args.tracking_uri)
    if args.registered_model is not None and args.experiment:
        raise UsageError("give --experiment or --registered-model, not both")
    experiments = args.experiment or ["depth"]
    out = checks.writable_dir("out", args.out or Path("reports") / (
        args.registered_model or "+".join(experiments)))
    uri = args.tracking_uri or default_tracking_uri()
    keep = [k.strip() for k in (args.keep or "").split(",") if k.strip()]
    if any(not k.startswith("m-") for k in keep):
        raise UsageError(f"--keep takes LoggedModel ids like m-0123abcd (comma-separated); "
                         f"got {args.keep!r}")
    try:
        report = make_report(experiments, uri, out, args.all_checkpoints,
                             log=not args.no_log, keep=keep,
                             registered_model=args.registered_model)
    except ValueError as err:
        print(f"depth report: {one_line(err)}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.rows, indent=2))
        return 0
    from depth.tracking.store import redact

    what = (f"registered model {args.registered_model!r}" if args.registered_model else
            f"experiment{'s' if len(experiments) > 1 else ''} {', '.join(map(repr, experiments))}")
    print(f"depth report: {what} at {redact(uri)}")
    print(format_table(report.rows))
    from depth.serving.physics import GPT3_J_PER_PARAMETER

    print(f"for scale: GPT-3 took ~{GPT3_J_PER_PARAMETER:.1f} J per parameter to train "
          "(1,287 MWh, Patterson et al. 2021)")
    print()
    for line in report.search_lines:
        print(line)
    print("\nwritten: " + ", ".join(str(p) for p in report.files))
    if report.run_id:
        print(f"logged to run {report.run_id}, the experiment's one depth-report run "
              "(artifacts depth-report/, replaced by each report)")
    return 0
