"""A `Provenance` from a ledger state and the facts of the run that made it.

A history may be metered differently in each fit (an estimate, then NVML after a resume):
each segment keeps the method of each of its devices, and the record names them all, in
the order they were used, and weighs its uncertainty by the joules of each.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from depth.record.carbon import carbon_for
from depth.record.provenance import Provenance, known_error
from depth.record.uncertainty import UNMEASURED, is_measured, uncertainty


def segment_methods(segment: Mapping[str, Any], methods: Mapping[str, str],
                    method: str) -> dict[str, str]:
    """The method of each device of a segment: its own record of them, else its one
    method, else (an older segment of several methods) the run's method of that device
    when it is one of the segment's, else the segment's combined name."""
    own = segment.get("methods") or {}
    combined = str(segment.get("method") or method)
    parts = combined.split("+")
    out = {}
    for device in segment.get("devices", {}):
        if device in own:
            out[device] = own[device]
        elif len(parts) == 1:
            out[device] = combined
        else:
            out[device] = methods[device] if methods.get(device) in parts else combined
    return out


def joules_by_method(state: Mapping[str, Any], methods: Mapping[str, str],
                     method: str) -> tuple[dict[str, float], list[str]]:
    """(joules per method over every segment, the methods in the order first used).

    A state without segments (none written yet) counts its devices with `methods`."""
    by_method: dict[str, float] = {}
    order: list[str] = []
    segments = state.get("segments") or [{"devices": state["devices"], "methods": {
        d: methods.get(d, method) for d in state["devices"]}}]
    for segment in segments:
        of = segment_methods(segment, methods, method)
        for device, joules in segment.get("devices", {}).items():
            by_method[of[device]] = by_method.get(of[device], 0.0) + float(joules)
        for m in sorted(set(of.values())) or [str(segment.get("method") or method)]:
            order.extend(p for p in m.split("+") if p not in order)
    return by_method, order


def build_provenance(state: Mapping[str, Any], *, methods: Mapping[str, str], method: str,
                     hardware: Mapping[str, Any], sync: str, parameters: int | None,
                     config_sha256: str | None, pue: float | None,
                     intensity: Mapping[str, Any] | None, parent: Mapping[str, Any] | None,
                     weights_sha256: str | None = None) -> Provenance:
    """The record for a ledger state (`depth.accounting.ledger.Ledger.state_dict`).

    Args:
        state: The ledger state, with ``flags`` (and ``parent``) added.
        methods: How each device's joules were obtained in this run; used for segments
            that do not say so themselves.
        method: This run's combined method (``a+b``), likewise.
        hardware: The run's hardware facts.
        sync: The CUDA synchronization mode.
        parameters: The trained module's parameter count.
        config_sha256: Digest of the training configuration.
        pue: The facility's PUE, when known: facility joules and carbon on them.
        intensity: The grid's carbon intensity (`depth.record.carbon.grid_intensity`).
        parent: The parent's sealed record, unless `state` names one.
        weights_sha256: Digest of the saved weights.
    """
    by_method, order = joules_by_method(state, methods, method)
    combined = "+".join(order) or method
    train_joules = state["train_joules"]
    nothing_measured = order == [UNMEASURED]  # no 0 J figure, no 0 g CO2
    facility = train_joules * pue if pue and not nothing_measured else None
    flags = list(state.get("flags", []))
    if UNMEASURED in order:
        flags.append("unmeasured: " + ("no device" if nothing_measured else "some devices")
                     + (" ever gave" if nothing_measured else " never gave")
                     + " a valid energy reading; "
                     + ("there is no energy figure" if nothing_measured else
                        "train_joules covers the others only, a lower bound"))
    return Provenance(
        parameters=parameters, config_sha256=config_sha256, known_error=known_error(combined),
        pue=pue, facility_joules=facility,
        carbon=(carbon_for(facility or train_joules, dict(intensity))
                if intensity and not nothing_measured else None),
        uncertainty=uncertainty(by_method), train_joules=train_joules,
        optimizer_steps=state["optimizer_steps"], train_tokens=state["tokens"],
        devices=dict(state["devices"]), method=combined,
        measured=is_measured(combined) and not _bridged(flags, state["segments"]),
        segments=list(state["segments"]), wasted_joules=state["wasted_joules"],
        weights_sha256=weights_sha256, created=state["saved_at"], hardware=dict(hardware),
        sync=sync, flags=list(dict.fromkeys(flags)), parent=state.get("parent", parent))


def _bridged(flags: list[str], segments: list[dict[str, Any]]) -> bool:
    """Whether a meter fault was bridged (last power x gap: an estimate) anywhere in the
    history: then the figure is not wholly measured, whatever the meter's method."""
    every = [*flags, *(f for s in segments for f in (s.get("flags") or []))]
    return any("bridg" in str(f) for f in every)
