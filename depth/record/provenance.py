"""The energy provenance record embedded in every checkpoint at ``checkpoint["depth"]``.

`Provenance` is JSON-serialisable and schema-versioned, sealed by its own digest and
bound to its weights by theirs (`depth.record.digest`). Read here from checkpoint files;
from MLflow sources by `depth.tracking.sources`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from depth.record.digest import CHECKPOINT_KEY, record_sha256
from depth.record.schema import SCHEMA, check_record

ATTRIBUTION = ("time-interpolated counter updates (update placed at the midpoint between the "
               "reads around it; boundaries on the line between updates); closure exact")


KNOWN_ERRORS = {
    "nvml-counter": "whole-GPU counter refreshed ~every 100 ms; on A100/H100 the power sensor "
                    "behind it samples only part of the time (Yang et al. 2023); depth's own "
                    "error bound on real GPUs is not yet measured",
    "nvml-power": "power sampled at 20 Hz and integrated: variation faster than 50 ms is "
                  "missed, and nvmlDeviceGetPowerUsage is a ~1 s average on many boards",
    "rapl": "CPU package and DRAM counters: PSU losses, fans, disks and network not included",
    "estimate": "a model, not a measurement (TDP x this process's CPU-time share, RAM by "
                "size): expect errors of tens of percent",
    "unmeasured": "no valid reading: the meter failed from the start, so these devices' "
                  "energy is missing, not zero",
}


def known_error(method: str) -> str:
    """What limits the accuracy of each source in a (possibly combined, ``a+b``) method."""
    return "; ".join(f"{m}: {KNOWN_ERRORS.get(m, 'a third-party meter: its error is its own')}"
                     for m in method.split("+"))


@dataclass
class Provenance:
    """How much energy produced a model's weights, and how that was measured.

    Attributes:
        train_joules: Whole-history joules up to the save: every segment, wasted work included.
        optimizer_steps: Optimizer steps at the save.
        train_tokens: Training tokens at the save (``None`` when not known).
        devices: Whole-history joules per device label.
        method: How joules were obtained (``nvml-counter``, ``rapl``, ``estimate``, ...):
            every source of every segment, in the order first used (``estimate+nvml-counter``
            after a resume with another meter); ``unmeasured`` for devices that never gave
            a valid reading.
        measured: Whether every part was measured (no ``estimate``, no ``unmeasured``);
            ``None`` in records written before it was stated (see `is_measured`).
        segments: One entry per fit (and per wasted stretch): steps, joules, wall time,
            start/end, method, hardware.
        wasted_joules: The part of `train_joules` spent on work no checkpoint kept.
        weights_sha256: Digest of the saved state_dict.
        parent: The parent model's whole sealed record (fine-tuning, distillation), or
            ``None``; covered by this record's digest. ``depth_joules`` (in `to_dict`) is
            `train_joules` plus every ancestor's.
        hardware: Devices, world size, nodes.
        created: ISO time of the save.
        sync: CUDA synchronization mode at step boundaries (``none``, ``log``, ``step``).
        attribution: How per-step joules were attributed.
        flags: Anything bridged or estimated mid-run, one line each.
        parameters: Parameter count of the trained module.
        config_sha256: Digest of the training configuration (module and datamodule
            hyperparameters, trainer settings).
        known_error: What limits the accuracy of the method (see `KNOWN_ERRORS`).
        pue: Power usage effectiveness of the facility, when given (>= 1).
        facility_joules: `train_joules` x `pue` (``None`` without a PUE).
        carbon: kg CO2eq of this model's own training (facility energy when a PUE is
            given) at a CodeCarbon offline grid intensity, labelled ``estimate``.
        uncertainty: Relative bound on `train_joules` and its basis, from the methods used
            (see `depth.record.uncertainty`).
        record_sha256: Digest of the rest of the record (see `record_sha256`), set by
            `sealed`; an edited record no longer matches it.
        signature: HMAC of `record_sha256` with the owner's key (`depth.record.signing`), when
            ``DEPTH_SIGNING_KEY`` was set; ``None`` otherwise.
    """

    train_joules: float
    optimizer_steps: int
    train_tokens: int | None
    devices: dict[str, float]
    method: str
    segments: list[dict[str, Any]]
    wasted_joules: float
    weights_sha256: str | None
    created: str
    hardware: dict[str, Any] = field(default_factory=dict)
    measured: bool | None = None
    parent: dict[str, Any] | None = None
    sync: str = "none"
    attribution: str = ATTRIBUTION
    flags: list[str] = field(default_factory=list)
    parameters: int | None = None
    config_sha256: str | None = None
    known_error: str | None = None
    pue: float | None = None
    facility_joules: float | None = None
    carbon: dict[str, Any] | None = None
    uncertainty: dict[str, Any] | None = None
    schema: str = SCHEMA
    record_sha256: str | None = None
    signature: dict[str, Any] | None = None

    @property
    def train_kwh(self) -> float:
        return self.train_joules / 3.6e6

    @property
    def unmeasured(self) -> bool:
        """Nothing was measured: the meter never gave a valid reading (its 0 J is no figure)."""
        return self.method == "unmeasured"

    @property
    def depth_joules(self) -> float:
        """The model's depth: its own training joules plus every ancestor's (lineage)."""
        from depth.record.lineage import depth_joules

        return depth_joules(asdict(self))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["train_kwh"] = None if self.unmeasured else self.train_kwh
        data["depth_joules"] = self.depth_joules
        return data

    def sealed(self, key: bytes | None = None, key_id: str | None = None) -> dict[str, Any]:
        """`to_dict` with ``record_sha256`` set over everything else, and signed with `key`
        when one is given: what checkpoints carry."""
        from depth.record.signing import signature

        data = self.to_dict()
        data["signature"] = None
        data["record_sha256"] = record_sha256(data)
        if key:
            data["signature"] = signature(data["record_sha256"], key, key_id)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Provenance":
        """Reads a record; unknown keys (newer writers of the same schema) are ignored.

        Raises:
            ValueError: Not a depth provenance record, one of a schema this depth does not
                read, or one with a missing or mistyped field (`depth.record.schema`).
        """
        check_record(data)
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def provenance_from_checkpoint(path: str | Path, trust: bool = False) -> Provenance:
    """The record embedded in a Lightning checkpoint file (loaded without running code).

    Raises:
        OSError: Missing or unreadable file.
        ValueError: Truncated, not a checkpoint, or no depth record.
    """
    from depth.record.checkpoint_io import load_checkpoint

    checkpoint = load_checkpoint(Path(path), trust)
    if CHECKPOINT_KEY not in checkpoint:
        raise ValueError(f"{path} carries no depth record (checkpoint['{CHECKPOINT_KEY}'])")
    try:
        return Provenance.from_dict(checkpoint[CHECKPOINT_KEY])
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
