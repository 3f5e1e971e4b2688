"""A `Provenance` from a ledger state and the facts of the run that made it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from depth.record.carbon import carbon_for
from depth.record.provenance import Provenance, known_error
from depth.record.uncertainty import uncertainty


def build_provenance(state: Mapping[str, Any], *, methods: Mapping[str, str], method: str,
                     hardware: Mapping[str, Any], sync: str, parameters: int | None,
                     config_sha256: str | None, pue: float | None,
                     intensity: Mapping[str, Any] | None, parent: Mapping[str, Any] | None,
                     weights_sha256: str | None = None) -> Provenance:
    """The record for a ledger state (`depth.accounting.ledger.Ledger.state_dict`).

    Args:
        state: The ledger state, with ``flags`` (and ``parent``) added.
        methods: How each device's joules were obtained; a device not named counts as
            `method`.
        method: The combined method (``a+b``).
        hardware: The run's hardware facts.
        sync: The CUDA synchronization mode.
        parameters: The trained module's parameter count.
        config_sha256: Digest of the training configuration.
        pue: The facility's PUE, when known: facility joules and carbon on them.
        intensity: The grid's carbon intensity (`depth.record.carbon.grid_intensity`).
        parent: The parent's sealed record, unless `state` names one.
        weights_sha256: Digest of the saved weights.
    """
    train_joules = state["train_joules"]
    facility = train_joules * pue if pue else None
    by_method: dict[str, float] = {}
    for device, joules in state["devices"].items():
        m = methods.get(device, method)
        by_method[m] = by_method.get(m, 0.0) + float(joules)
    return Provenance(
        parameters=parameters, config_sha256=config_sha256, known_error=known_error(method),
        pue=pue, facility_joules=facility,
        carbon=carbon_for(facility or train_joules, dict(intensity)) if intensity else None,
        uncertainty=uncertainty(by_method), train_joules=train_joules,
        optimizer_steps=state["optimizer_steps"], train_tokens=state["tokens"],
        devices=dict(state["devices"]), method=method, segments=list(state["segments"]),
        wasted_joules=state["wasted_joules"], weights_sha256=weights_sha256,
        created=state["saved_at"], hardware=dict(hardware), sync=sync,
        flags=list(state.get("flags", [])), parent=state.get("parent", parent))
