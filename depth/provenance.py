"""The energy provenance record embedded in every checkpoint at ``checkpoint["depth"]``.

`Provenance` is JSON-serialisable and schema-versioned. `weights_sha256` digests the
model's state_dict (names, dtypes, shapes and bytes, in name order) so that a record can
be checked against the weights it describes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = "depth.provenance/1"
CHECKPOINT_KEY = "depth"
ATTRIBUTION = ("time-interpolated counter updates (update placed at the midpoint between the "
               "reads around it; boundaries on the line between updates); closure exact")


def weights_sha256(state_dict: Mapping[str, Any]) -> str:
    """A deterministic digest of a state_dict: names, dtypes, shapes and raw bytes.

    Tensors are hashed in name order, one at a time (streaming: no concatenated copy).
    Non-tensor entries (rare: extra state) are hashed through their ``repr``.
    """
    import torch

    digest = hashlib.sha256()
    for name in sorted(state_dict):
        value = state_dict[name]
        digest.update(name.encode())
        if isinstance(value, torch.Tensor):
            tensor = value.detach()
            digest.update(f"|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
            flat = tensor.reshape(-1).contiguous().cpu()
            if flat.numel():
                digest.update(flat.view(torch.uint8).numpy().data)
        else:
            digest.update(f"|{type(value).__name__}|{value!r}|".encode())
    return digest.hexdigest()


def record_sha256(record: Mapping[str, Any]) -> str:
    """Digest of a record's canonical JSON (sorted keys), its own digest field left out."""
    body = {k: v for k, v in record.items() if k != "record_sha256"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class Provenance:
    """How much energy produced a model's weights, and how that was measured.

    Attributes:
        train_joules: Whole-history joules up to the save: every segment, wasted work included.
        optimizer_steps: Optimizer steps at the save.
        train_tokens: Training tokens at the save (``None`` when not known).
        devices: Whole-history joules per device label.
        method: How joules were obtained (``nvml-counter``, ``rapl``, ``estimate``, ...).
        segments: One entry per fit (and per wasted stretch): steps, joules, wall time,
            start/end, method, hardware.
        wasted_joules: The part of `train_joules` spent on work no checkpoint kept.
        weights_sha256: Digest of the saved state_dict.
        parent: The parent model's record (fine-tuning, distillation), or ``None``.
        hardware: Devices, world size, nodes.
        created: ISO time of the save.
        sync: CUDA synchronization mode at step boundaries (``none``, ``log``, ``step``).
        attribution: How per-step joules were attributed.
        flags: Anything bridged or estimated mid-run, one line each.
        record_sha256: Digest of the rest of the record (see `record_sha256`), set by
            `sealed`; an edited record no longer matches it.
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
    parent: dict[str, Any] | None = None
    sync: str = "none"
    attribution: str = ATTRIBUTION
    flags: list[str] = field(default_factory=list)
    schema: str = SCHEMA
    record_sha256: str | None = None

    @property
    def train_kwh(self) -> float:
        return self.train_joules / 3.6e6

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["train_kwh"] = self.train_kwh
        return data

    def sealed(self) -> dict[str, Any]:
        """`to_dict` with ``record_sha256`` set over everything else: what checkpoints carry."""
        data = self.to_dict()
        data["record_sha256"] = record_sha256(data)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Provenance":
        """Reads a record; unknown keys (newer writers) are ignored.

        Raises:
            ValueError: Not a depth provenance record.
        """
        if not isinstance(data, Mapping) or not str(data.get("schema", "")).startswith(
                "depth.provenance/"):
            raise ValueError("not a depth provenance record (no 'schema: depth.provenance/N')")
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def provenance_from_checkpoint(path: str | Path, trust: bool = False) -> Provenance:
    """The record embedded in a Lightning checkpoint file (loaded without running code).

    Raises:
        OSError: Missing or unreadable file.
        ValueError: Truncated, not a checkpoint, or no depth record.
    """
    from depth.checkpoint_io import load_checkpoint

    checkpoint = load_checkpoint(Path(path), trust)
    if CHECKPOINT_KEY not in checkpoint:
        raise ValueError(f"{path} carries no depth record (checkpoint['{CHECKPOINT_KEY}'])")
    return Provenance.from_dict(checkpoint[CHECKPOINT_KEY])
