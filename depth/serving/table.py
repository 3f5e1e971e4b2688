"""The `depth eval` table: one text block from the JSON-ready result, the same for the CLI
and for a custom loop (`depth.inference_table` of what `depth.measure_inference` returned)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _joules(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def generation_line(result: Mapping[str, Any]) -> str:
    """How tokens were generated: through what, with or without a KV cache, what context."""
    if result.get("generation") == "generate":
        how = "the given generate callable (prefill and decode in one window)"
    elif result.get("kv_cache") is False:
        how = "greedy through forward(idx), no KV cache (each step recomputes the context)"
    else:
        how = "greedy through forward(idx, past) with the model's KV cache"
    if context := result.get("context_tokens"):
        how += f"; context {context} tokens"
        if result.get("cropped"):
            how += (f" (prompt {result['prompt_tokens']} + {result['new_tokens']} new exceed "
                    "it: cropped)")
    if result.get("model_class"):
        how += f"; model {result['model_class']}"
    return f"  generation: {how}"


def spread_text(ratio: float, max_spread: float | None = None) -> str:
    """``xRATIO`` with enough digits that it never reads as the `max_spread` it was
    compared with (x1.253, not x1.25, at --max-spread 1.25)."""
    text = f"x{ratio:.3g}"
    for digits in range(3, 8):
        text = f"x{ratio:.{digits}g}"
        if max_spread is None or ratio == max_spread or (
                float(text[1:]) != max_spread and (float(text[1:]) > max_spread) == (
                    ratio > max_spread)):
            break
    return text


def attempts_text(attempts: int) -> str:
    """``in its one attempt`` or ``in each of N attempts``."""
    return "in its one attempt" if attempts == 1 else f"in each of {attempts} attempts"


def _batch_rows(result: Mapping[str, Any]) -> list[str]:
    rows = [f"  {'batch':>6} {'tokens':>8} {'joules':>10} {'seconds':>9} {'tokens/Wh':>12} "
            f"{'(min-max)':>21} {'net tok/Wh':>11} {'prefill J':>10} {'decode J':>10} "
            f"{'spread':>8}"]
    for b in result["batches"]:
        low, high = b["tokens_per_wh_spread"]
        net = "-" if b["net_tokens_per_wh"] is None else f"{b['net_tokens_per_wh']:,.0f}"
        spread = spread_text(b["spread_ratio"], result.get("max_spread")) + (
            " UNSTABLE" if b["unstable"] else "")
        rows.append(f"  {b['batch_size']:>6} {b['tokens']:>8} {b['joules']:>10.4g} "
                    f"{b['seconds']:>9.4f} {b['tokens_per_wh']:>12,.0f} "
                    f"{f'{low:,.0f}-{high:,.0f}':>21} {net:>11} "
                    f"{_joules(b['prefill_joules']):>10} {_joules(b['decode_joules']):>10} "
                    f"{spread:>8}")
    for b in result["batches"]:
        if b["unstable"]:
            rows.append(f"  UNSTABLE batch {b['batch_size']}: its {b['repeats']} repeats spread "
                        f"{spread_text(b['spread_ratio'], result.get('max_spread'))} "
                        f"(max/min) {attempts_text(b['attempts'])}; its figures are not "
                        "reliable (a busy machine?)")
    if result.get("stopped"):
        rows.append(f"  sweep stopped: {result['stopped']}")
    return rows


def _physics_rows(result: Mapping[str, Any]) -> list[str]:
    phys = result["physics"]
    rows = [f"  best{' (UNSTABLE)' if result['best_unstable'] else ''}: batch "
            f"{result['best_batch_size']}, {result['tokens_per_wh']:,.0f} tokens/Wh,"
            f" {result['joules_per_token']:.4g} J/token, "
            f"{phys['wh_per_million_tokens']:.4g} Wh per million tokens"]
    if "ceiling_fraction" in phys:
        rows.append(f"  compute ceiling on {phys['hardware']}: "
                    f"{phys['ceiling_tokens_per_wh']:,.0f} tokens/Wh; achieved "
                    f"{phys['ceiling_fraction']:.1%}")
    else:
        rows.append("  compute ceiling: no hardware figure (give --hardware, e.g. "
                    "custom:PEAK_TFLOPS:WATTS for a CPU)")
    if phys.get("landauer_ratio"):
        rows.append(f"  Landauer: {phys['bits_removed_per_token']:.2f} bits removed per token "
                    f"(held-out loss {phys['held_out_loss_nats']:.3f} nats), bound "
                    f"{phys['landauer_j_per_token']:.3g} J/token; measured is "
                    f"{phys['landauer_ratio']:.3g} times that")
    elif phys.get("held_out_loss_nats") is None:
        rows.append(f"  loss: {phys.get('loss') or 'not measured'}, so no Landauer bound")
    return rows


def eval_heading(facts: Mapping[str, Any]) -> str:
    """The table's heading: what is measured, on what, with which meter. `facts` is a
    result, or what `measure_result` hands ``on_start`` before measuring (with ``source``
    and ``model``), so that the CLI prints the heading before the progress lines."""
    measured = "measured" if facts["measured"] else "ESTIMATED: no sensor"
    model, source = facts.get("model"), facts.get("source")
    named = (f"{model} (attached to {source})" if model and source and model != source
             else source or model or "model")
    rows = [f"depth eval: {named}  "
            f"({facts['device']}, {facts['dtype']}, {facts['method']}, {measured})"]
    if facts.get("uncertainty"):
        rows.append(f"  uncertainty +/-{facts['uncertainty']['relative']:.0%} on every energy "
                    "figure (assumed for the method, not measured here)")
    if (facts.get("energy_basis") or {}).get("attribution") == "process":
        rows.append("  CPU joules: this process's CPU time x TDP share (other processes' work "
                    "is not billed; idle power is not included)")
    return "\n".join(rows)


def format_eval(result: Mapping[str, Any], heading: bool = True) -> str:
    """The table `depth eval` prints for `result` (a result not yet attached to a source
    has no break-even line); without the `heading` when it was printed already."""
    rows = [eval_heading(result)] if heading else []
    rows.append(generation_line(result))
    if result["idle_w"] is not None:
        rows.append(f"  idle power {result['idle_w']:.1f} W")
    rows += _batch_rows(result) + _physics_rows(result)
    if result.get("break_even_tokens") is not None:
        rows.append(f"  break-even: after {result['break_even_tokens']:,.0f} served tokens, "
                    "serving has used as much energy as training "
                    f"({result['depth_joules']:,.1f} J)")
    elif result.get("train_joules") is None:
        rows.append("  break-even: no training record for this model (it carries none: name "
                    "the trained one with --source, or source= in Python)")
    if str(result.get("not_logged")).startswith("no training record"):
        rows.append("  not attached (no training record: give --source)")
    elif "logged_model" in result:
        where = (f"logged on LoggedModel {result['logged_model']}" if result["logged_model"]
                 else "not logged to MLflow ("
                 f"{result.get('not_logged') or 'no LoggedModel found for this model'})")
        rows.append(f"  {where}" + (f"; written to {result['written']}"
                                    if result.get("written") else ""))
    else:
        rows.append("  not attached to a trained model (give source=, or call "
                    "depth.log_inference)")
    return "\n".join(rows)
