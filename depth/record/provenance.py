"""The energy provenance record embedded in every checkpoint at ``checkpoint["depth"]``.

`Provenance` is JSON-serialisable and schema-versioned. `weights_sha256` digests the
model's state_dict (names, dtypes, shapes and bytes, in name order) so that a record can
be checked against the weights it describes.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
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


KNOWN_ERRORS = {
    "nvml-counter": "whole-GPU counter refreshed ~every 100 ms; on A100/H100 the power sensor "
                    "behind it samples only part of the time (Yang et al. 2023); depth's own "
                    "error bound on real GPUs is not yet measured",
    "nvml-power": "power sampled at 20 Hz and integrated: variation faster than 50 ms is "
                  "missed, and nvmlDeviceGetPowerUsage is a ~1 s average on many boards",
    "rapl": "CPU package and DRAM counters: PSU losses, fans, disks and network not included",
    "estimate": "a model, not a measurement (TDP x load curve, RAM by size): expect errors of "
                "tens of percent",
}


def known_error(method: str) -> str:
    """What limits the accuracy of each source in a (possibly combined, ``a+b``) method."""
    return "; ".join(f"{m}: {KNOWN_ERRORS.get(m, 'a third-party meter: its error is its own')}"
                     for m in method.split("+"))


def record_sha256(record: Mapping[str, Any]) -> str:
    """Digest of a record's canonical JSON (sorted keys), its own digest and its signature
    (which signs this digest) left out."""
    body = {k: v for k, v in record.items() if k not in ("record_sha256", "signature")}
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
    def depth_joules(self) -> float:
        """The model's depth: its own training joules plus every ancestor's (lineage)."""
        from depth.record.lineage import depth_joules

        return depth_joules(asdict(self))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["train_kwh"] = self.train_kwh
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
    from depth.record.checkpoint_io import load_checkpoint

    checkpoint = load_checkpoint(Path(path), trust)
    if CHECKPOINT_KEY not in checkpoint:
        raise ValueError(f"{path} carries no depth record (checkpoint['{CHECKPOINT_KEY}'])")
    return Provenance.from_dict(checkpoint[CHECKPOINT_KEY])


def _logged_model_of(version: Any) -> str | None:
    """The LoggedModel behind a registered version (some stores leave ``model_id`` empty
    and keep it only in the version's ``source``, ``models:/m-<id>``)."""
    if getattr(version, "model_id", None):
        return version.model_id
    source = str(getattr(version, "source", "") or "")
    return source.removeprefix("models:/") if source.startswith("models:/m-") else None


def logged_model_id(client: Any, source: str) -> str:
    """The LoggedModel behind ``m-<id>``, ``models:/m-<id>``, ``models:/NAME/VERSION``,
    ``models:/NAME@ALIAS``, or ``runs:/<run_id>`` (the run's latest checkpoint's)."""
    if source.startswith("runs:/"):
        run_id = source.removeprefix("runs:/").split("/")[0]
        experiment = client.get_run(run_id).info.experiment_id
        models = [m for m in client.search_logged_models([experiment])
                  if m.source_run_id == run_id and "depth.step" in m.tags]
        if not models:
            raise ValueError(f"{source}: the run has no checkpoint LoggedModel")
        return max(models, key=lambda m: int(m.tags["depth.step"])).model_id
    name = source.removeprefix("models:/")
    if name.startswith("m-"):
        model_id = name.split("/")[0]
    elif "@" in name:
        registered, alias = name.split("@", 1)
        model_id = _logged_model_of(client.get_model_version_by_alias(registered, alias))
    elif "/" in name:
        registered, version = name.split("/", 1)
        model_id = _logged_model_of(client.get_model_version(registered, version))
    else:
        raise ValueError(f"{source}: give a version (models:/NAME/VERSION) or an alias "
                         "(models:/NAME@ALIAS)")
    if not model_id:
        raise ValueError(f"{source} is a model version without a LoggedModel behind it")
    return model_id


def read_provenance(source: str | Path, tracking_uri: str | None = None,
                    trust: bool = False) -> Provenance:
    """The depth record of a model, wherever it is.

    Args:
        source: A checkpoint file path; ``runs:/<run_id>`` (the run's latest record);
            ``models:/<name>/<version>`` or ``models:/<name>@<alias>`` (a registered
            version); ``m-<model_id>`` or ``models:/m-<model_id>`` (a LoggedModel).
        tracking_uri: Where MLflow sources live (default: ``MLFLOW_TRACKING_URI`` or the
            default store).
        trust: Let a checkpoint file run the code it pickles (never for MLflow sources).

    Raises:
        OSError: A missing or unreadable file.
        ValueError: No record there, or a source in none of the forms above (one line).
    """
    text = str(source)
    if not (text.startswith(("runs:/", "models:/", "m-"))):
        return provenance_from_checkpoint(text, trust)
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    from depth.tracking.publish import MODEL_ARTIFACT, RUN_ARTIFACT
    from depth.tracking.store import default_tracking_uri

    tracking_uri = tracking_uri or default_tracking_uri()
    client = MlflowClient(tracking_uri)
    try:
        if text.startswith("runs:/"):
            run_id = text.removeprefix("runs:/").split("/")[0]
            uri = f"{client.get_run(run_id).info.artifact_uri}/{RUN_ARTIFACT}"
        else:
            model_id = logged_model_id(client, text)
            uri = f"{client.get_logged_model(model_id).artifact_location}/{MODEL_ARTIFACT}"
        with tempfile.TemporaryDirectory() as tmp:
            path = download_artifacts(artifact_uri=uri, dst_path=tmp, tracking_uri=tracking_uri)
            data = json.loads(Path(path).read_text())
    except MlflowException as err:
        message = " ".join(str(err.message if hasattr(err, "message") else err).split())
        raise ValueError(f"{text}: {message[:200]}") from None
    except OSError as err:
        raise ValueError(f"{text}: no depth record there ({err.strerror or err})") from None
    return Provenance.from_dict(data)
