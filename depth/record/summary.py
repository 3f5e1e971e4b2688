"""A record told in words: the markdown summary and the parameters of a model's page.

Framework-free. MLflow shows a LoggedModel's (and a run's, and a registered version's)
description as markdown, and its parameters as a table; `depth.tracking.pages` puts what
this module writes there, so that a page explains its own figures: energy with units,
how it was obtained and how far to trust it, and, once measured, what serving costs.

Reference point: GPT-3 (175B parameters) took ~1,287 MWh to train (Patterson et al. 2021,
"Carbon Emissions and Large Neural Network Training", Table 4), i.e. 1,287e6 Wh x 3,600
J/Wh / 175e9 = ~26.5 J per parameter (the design notes round it to ~27).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from depth.record.lineage import chain, depth_joules
from depth.record.uncertainty import is_measured, measurement_label

J_PER_WH = 3600.0
J_PER_KWH = 3.6e6
GPT3_TRAIN_WH = 1_287e6  # 1,287 MWh (Patterson et al. 2021)
GPT3_PARAMETERS = 175e9
GPT3_J_PER_PARAMETER = GPT3_TRAIN_WH * J_PER_WH / GPT3_PARAMETERS  # ~26.5 J/param
GPT3_SOURCE = "1,287 MWh for 175B parameters, Patterson et al. 2021"
UNMEASURED = "unmeasured"
MAX_PARAM_CHARS = 500  # MLflow takes 6,000; a page's table wants less


def joules_text(joules: float) -> str:
    """``32.9 J``, ``1,234 J``, ``4.2e+07 J``: three significant digits, commas below 1e7."""
    return f"{joules:,.0f} J" if 100 <= abs(joules) < 1e7 else f"{joules:.3g} J"


def energy_text(joules: float) -> str:
    """Energy in kWh with joules beside it: ``9.15e-06 kWh (32.9 J)``."""
    return f"{joules / J_PER_KWH:.3g} kWh ({joules_text(joules)})"


def _measured(record: Mapping[str, Any]) -> bool:
    return is_measured(str(record.get("method", ""))) and record.get("measured") is not False


def uncertainty_text(record: Mapping[str, Any]) -> str:
    """``±10% (±3.3 J; assumed per-method bounds ...)``, or why there is no bound."""
    if record.get("method") == UNMEASURED:
        return "none: nothing was measured"
    bound = record.get("uncertainty")
    if not isinstance(bound, Mapping) or bound.get("relative") is None:
        return "no known bound (a third-party meter's error is its own)"
    basis = str(bound.get("basis", "")).split(" (")[0]
    return (f"±{bound['relative']:.0%} (±{joules_text(float(bound['joules']))}"
            + (f"; {basis}" if basis else "") + ")")


def hardware_text(record: Mapping[str, Any]) -> str:
    """``2 x NVIDIA H100 80GB HBM3, 1 x AMD EPYC (2 ranks, 1 node)``, or ``unknown``."""
    hardware = record.get("hardware") or {}
    gpus: dict[str, int] = {}
    for rank in hardware.get("ranks") or []:
        for gpu in rank.get("gpus") or []:
            name = str(gpu.get("name", "GPU"))
            gpus[name] = gpus.get(name, 0) + 1
    parts = [f"{n} x {name}" for name, n in gpus.items()]
    if hardware.get("cpu_model"):
        parts.append(f"{hardware.get('num_nodes', 1)} x {hardware['cpu_model']}")
    if not parts:
        return "unknown"
    world, nodes = hardware.get("world_size", 1), hardware.get("num_nodes", 1)
    return ", ".join(parts) + (f" ({world} ranks, {nodes} node{'s' * (nodes != 1)})"
                               if world != 1 or nodes != 1 else "")


def parent_text(record: Mapping[str, Any]) -> str:
    """The lineage, newest first: ``691ac2b37e3b (32.9 J) <- 0a1b2c3d4e5f (1,234 J)``, or
    ``none (trained from scratch)``."""
    ancestors = list(chain(record))[1:]
    if not ancestors:
        return "none (trained from scratch)"
    return " <- ".join(f"{str(a.get('record_sha256') or 'unsealed')[:12]} "
                       f"({joules_text(float(a.get('train_joules', 0.0)))})" for a in ancestors)


def _clip(text: str) -> str:
    return text if len(text) <= MAX_PARAM_CHARS else text[:MAX_PARAM_CHARS - 3] + "..."


def model_params(record: Mapping[str, Any]) -> dict[str, str]:
    """The ``depth.*`` parameters of a checkpoint's LoggedModel: how its energy figure was
    obtained (method, measured, devices, hardware, sync, uncertainty), the work it paid for
    (optimizer steps, tokens, parameters) and where it came from (parent). Text, as MLflow
    keeps parameters."""
    devices = record.get("devices") or {}
    method = str(record.get("method"))
    tokens, parameters = record.get("train_tokens"), record.get("parameters")
    return {k: _clip(v) for k, v in {
        "depth.method": method,
        "depth.measured": f"{str(_measured(record)).lower()} "
                          f"({measurement_label(method, record.get('measured'))})",
        "depth.optimizer_steps": str(record.get("optimizer_steps")),
        "depth.train_tokens": "unknown" if tokens is None else str(tokens),
        "depth.parameters": "unknown" if parameters is None else str(parameters),
        "depth.devices": ", ".join(f"{d} {joules_text(float(j))}" for d, j in devices.items())
                         or "none",
        "depth.hardware": hardware_text(record),
        "depth.sync": str(record.get("sync", "none")),
        "depth.parent": parent_text(record),
        "depth.uncertainty": uncertainty_text(record),
    }.items()}


def _inference_lines(depth_j: float | None, inference: Mapping[str, Any] | None,
                     amortization: Mapping[str, Any] | None) -> list[str]:
    if not inference or not inference.get("joules_per_token"):
        return ["- **Inference**: not measured yet (`depth eval` measures tokens/Wh and "
                "adds it here)"]
    j_token = float(inference["joules_per_token"])
    tokens_per_wh = inference.get("tokens_per_wh") or J_PER_WH / j_token
    method = inference.get("method")
    if method and inference.get("measured") is False:
        method = f"{method}, ESTIMATED"
    how = ", ".join(str(x) for x in (
        f"batch {inference['best_batch_size']:.0f}" if inference.get("best_batch_size")
        else None, method) if x)
    lines = [f"- **Inference**: {tokens_per_wh:,.0f} tokens/Wh ({j_token:.3g} J/token"
             + (f"; {how}" if how else "") + ")"]
    if depth_j:
        lines.append(f"- **Break-even**: {depth_j / j_token:,.0f} served tokens (then serving "
                     "has used as much energy as training)")
    if amortization and amortization.get("amortized_j_per_token") is not None:
        share = amortization.get("training_share")
        lines.append(f"- **Amortized** (`depth amortize`): "
                     f"{float(amortization['amortized_j_per_token']):.3g} J/token over "
                     f"{float(amortization['served_tokens']):,.0f} served tokens"
                     + (f" ({float(share):.1%} of it training)" if share is not None else ""))
    return lines


def summary_markdown(record: Mapping[str, Any], inference: Mapping[str, Any] | None = None,
                     amortization: Mapping[str, Any] | None = None,
                     extra_lines: Mapping[str, str] | None = None) -> str:
    """The markdown description of a model's page.

    Args:
        record: The model's depth record (a dict).
        inference: What `depth eval` measured, when it has: ``joules_per_token``,
            ``tokens_per_wh``, ``best_batch_size``, ``method``, ``measured``.
        amortization: The current `depth amortize` scenario: ``amortized_j_per_token``,
            ``served_tokens``, ``training_share``.
        extra_lines: HOOK for further figures kept apart from training energy (e.g. the
            energy of the search, ``search_joules``, issue 15 point 5): each ``label:
            text`` becomes one bullet after the training figures.
    """
    method = str(record.get("method"))
    unmeasured = method == UNMEASURED
    train_j = float(record.get("train_joules", 0.0))
    depth_j = None if unmeasured else depth_joules(record)
    label = measurement_label(method, record.get("measured"))
    head = ("**Training energy: unmeasured** (no valid reading: no figure, and not 0)"
            if unmeasured else f"**Training energy: {energy_text(train_j)}**")
    lines = [f"{head}, `{method}` ({label}); uncertainty {uncertainty_text(record)}", ""]
    parameters = record.get("parameters")
    if depth_j is not None and parameters:
        lines.append(f"- **Per parameter**: {depth_j / parameters:.3g} J/param, beside GPT-3's "
                     f"~{GPT3_J_PER_PARAMETER:.1f} J/param ({GPT3_SOURCE})")
    tokens = record.get("train_tokens")
    lines.append(f"- **Work**: {record.get('optimizer_steps')} optimizer steps, "
                 + ("unknown tokens" if tokens is None else f"{tokens:,} tokens")
                 + (f", {parameters:,} parameters" if parameters else ""))
    segments = record.get("segments") or []
    kinds: dict[str, int] = {}
    for segment in segments:
        kind = str(segment.get("kind", "fit"))
        kinds[kind] = kinds.get(kind, 0) + 1
    wasted = float(record.get("wasted_joules", 0.0))
    lines.append(f"- **Segments**: {len(segments)} ("
                 + ", ".join(f"{n} {k}" for k, n in kinds.items()) + "); wasted work "
                 + (f"{joules_text(wasted)} ({wasted / train_j:.1%} of training, included)"
                    if train_j > 0 else joules_text(wasted)))
    lines.append(f"- **Parent chain**: {parent_text(record)}"
                 + (f"; depth with parents {energy_text(depth_j)}"
                    if depth_j is not None and record.get("parent") else ""))
    lines.append(f"- **Hardware**: {hardware_text(record)}; step boundaries synchronized: "
                 f"{record.get('sync', 'none')}")
    for name, text in (extra_lines or {}).items():  # HOOK: search_joules and the like
        lines.append(f"- **{name}**: {text}")
    lines += _inference_lines(depth_j, inference, amortization)
    digest = record.get("record_sha256")
    lines += ["", f"Record {str(digest)[:12] if digest else 'unsealed'}..., schema "
              f"{record.get('schema', '?')}; written by depth (edit it and depth leaves it "
              "alone)."]
    return "\n".join(lines) + "\n"
