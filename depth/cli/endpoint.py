"""`depth eval --endpoint URL --model-name NAME`: a served model's tokens/Wh (options and
output; the measuring is `depth.serving.endpoint_eval`)."""

from __future__ import annotations

import json
import sys
from typing import Any

from jsonargparse import ArgumentParser, Namespace

from depth.cli import checks
from depth.cli.common import UsageError, int_list, one_line, progress, warn_line

# Options of a checkpoint's eval that mean nothing for a server (it picks its own).
NOT_FOR_ENDPOINT = ("batch_sizes", "dtype", "device", "hardware", "model_class", "context_tokens")


def declare_endpoint(p: ArgumentParser) -> None:
    """The options of `depth eval --endpoint` (the sweep's lengths, repeats, windows and
    meter options are shared with a checkpoint's eval)."""
    p.add_argument("--endpoint", type=str, default=None,
                   help="Measure an OpenAI-compatible server on this machine instead of a "
                   "checkpoint: http://HOST:PORT/v1 (vLLM, TGI, llama.cpp, transformers "
                   "serve); with --model-name.")
    p.add_argument("--model-name", type=str, default=None,
                   help="With --endpoint: the model name the server expects.")
    p.add_argument("--concurrency", type=str, default=None,
                   help="With --endpoint: comma-separated concurrent streams (default "
                   "1,4,16,64).")
    p.add_argument("--server-pid", type=int, default=None,
                   help="With --endpoint and no energy sensor: the server's process, whose "
                   "CPU time the estimate bills (default: the process listening on the port).")
    p.add_argument("--request-timeout-s", type=float, default=300.0,
                   help="With --endpoint: longest wait for one answer.")


def run_endpoint(args: Namespace) -> int:
    """`depth eval --endpoint`: checked options, the sweep, the table or JSON."""
    from depth.serving.endpoint import EndpointConfig
    from depth.serving.endpoint_eval import evaluate_endpoint
    from depth.serving.inference import MAX_WINDOW_S

    if not args.model_name:
        raise UsageError("--endpoint needs --model-name NAME (the model the server serves, "
                         "as in its /v1/models)")
    if args.model is not None:
        raise UsageError(f"with --endpoint, name the trained model with --source "
                         f"{args.model} (the server is what is measured)")
    for name in NOT_FOR_ENDPOINT:
        if getattr(args, name, None) is not None:
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"{flag} does not apply to --endpoint (the server chooses it); "
                             "give --concurrency for the sweep")
    checks.meter("meter", args.meter)
    checks.bounded("min-window-s", args.min_window_s, 0.0, MAX_WINDOW_S, " s")
    checks.bounded("idle-s", args.idle_s, 0.0, MAX_WINDOW_S, " s")
    checks.bounded("request-timeout-s", args.request_timeout_s, 1e-3, MAX_WINDOW_S, " s")
    checks.tracking_uri("tracking-uri", args.tracking_uri)
    if args.server_pid is not None and args.server_pid < 1:
        raise UsageError(f"--server-pid takes a process id (got {args.server_pid})")
    try:
        config = EndpointConfig(
            concurrency=int_list("concurrency", args.concurrency) or [1, 4, 16, 64],
            prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens,
            repeats=args.repeats, min_window_s=args.min_window_s, idle_s=args.idle_s,
            max_spread=args.max_spread, remeasures=args.remeasures,
            request_timeout_s=args.request_timeout_s)
        result = evaluate_endpoint(args.endpoint, args.model_name, config, meter=args.meter,
                                   source=args.source, server_pid=args.server_pid,
                                   tracking_uri=args.tracking_uri, log=not args.no_log,
                                   progress=progress, warn=warn_line("eval"),
                                   on_start=None if args.json else _show_heading)
    except (OSError, ValueError) as err:
        print(f"depth eval: {one_line(err)}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_endpoint(result, heading=False)  # the heading came before the progress lines
    return 0


def _show_heading(facts: dict[str, Any]) -> None:
    print(endpoint_heading(facts), flush=True)


def endpoint_heading(facts: dict[str, Any]) -> str:
    """What is measured and what the meter covers: a result, or the facts that
    `evaluate_endpoint` hands ``on_start`` before measuring."""
    measured = "measured" if facts["measured"] else "ESTIMATED: no sensor"
    rows = [f"depth eval: {facts['model_name']} served at {facts['endpoint']}  "
            f"({facts['method']}, {measured})"]
    rows += [f"  meter covers {line}" for line in facts["meter_covers"]]
    if facts.get("uncertainty"):
        rows.append(f"  uncertainty +/-{facts['uncertainty']['relative']:.0%} on every energy "
                    "figure (assumed for the method, not measured here)")
    return "\n".join(rows)


def print_endpoint(result: dict[str, Any], heading: bool = True) -> None:
    """The sweep as a table, with what the meter covers above it (unless the `heading`
    was printed already)."""
    if heading:
        print(endpoint_heading(result))
    length = ("exactly" if result["fixed_output_length"] else
              "at most (the server ends at EOS: it takes no ignore_eos), counted from usage:")
    print(f"  prompt {result['prompt_tokens']} tokens (from usage), {length} "
          f"{result['new_tokens']} new tokens per request")
    if result["idle_w"] is not None:
        print(f"  idle power {result['idle_w']:.1f} W")
    print(f"  {'streams':>7} {'answers':>8} {'tokens':>8} {'joules':>10} {'seconds':>9} "
          f"{'tokens/s':>9} {'tokens/Wh':>12} {'(min-max)':>21} {'net tok/Wh':>11} "
          f"{'spread':>8}")
    for b in result["batches"]:
        low, high = b["tokens_per_wh_spread"]
        net = "-" if b["net_tokens_per_wh"] is None else f"{b['net_tokens_per_wh']:,.0f}"
        spread = f"x{b['spread_ratio']:.3g}" + (" UNSTABLE" if b["unstable"] else "")
        print(f"  {b['concurrency']:>7} {b['requests']:>8} {b['tokens']:>8} "
              f"{b['joules']:>10.4g} {b['seconds']:>9.3f} {b['tokens_per_second']:>9,.1f} "
              f"{b['tokens_per_wh']:>12,.0f} {f'{low:,.0f}-{high:,.0f}':>21} {net:>11} "
              f"{spread:>8}")
    if result.get("stopped"):
        print(f"  sweep stopped: {result['stopped']}")
    print(f"  best{' (UNSTABLE)' if result['best_unstable'] else ''}: "
          f"{result['best_concurrency']} streams, {result['tokens_per_wh']:,.0f} tokens/Wh, "
          f"{result['joules_per_token']:.4g} J/token, "
          f"{result['physics']['wh_per_million_tokens']:.4g} Wh per million tokens")
    print(f"  loss: {result['physics'].get('loss') or 'not measured'}")
    if result["break_even_tokens"] is not None:
        print(f"  break-even: after {result['break_even_tokens']:,.0f} served tokens, serving "
              f"has used as much energy as training ({result['depth_joules']:,.1f} J)")
    else:
        print("  break-even: no --source, so no training energy to set it against")
    where = (f"logged on LoggedModel {result['logged_model']}" if result["logged_model"]
             else "not logged to MLflow" + ("" if result["source"] else " (no --source)"))
    print(f"  {where}" + (f"; written to {result['written']}" if result.get("written") else ""))
