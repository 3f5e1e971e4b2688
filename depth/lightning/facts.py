"""Facts of a fit that a record states: its configuration's digest, hardware and parent."""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo, else the platform's word for it)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def config_sha256(trainer: pl.Trainer, module: pl.LightningModule) -> str:
    """Digest of the training configuration: module and datamodule hyperparameters and the
    trainer settings that change what is computed."""
    datamodule = getattr(trainer, "datamodule", None)
    config = {
        "module": type(module).__qualname__, "hparams": dict(module.hparams),
        "datamodule_hparams": dict(getattr(datamodule, "hparams", {}) or {}),
        "trainer": {k: str(getattr(trainer, k, None)) for k in (
            "max_epochs", "max_steps", "accumulate_grad_batches", "precision",
            "gradient_clip_val", "world_size", "num_nodes")},
    }
    text = json.dumps(config, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def run_hardware(trainer: pl.Trainer, ranks: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The record's ``hardware``: world size, nodes, CPU, accelerator, torch, and each
    rank's meter hardware (as gathered from every rank)."""
    return {"world_size": int(trainer.world_size), "num_nodes": int(trainer.num_nodes),
            "cpu_model": cpu_model(), "accelerator": trainer.strategy.root_device.type,
            "torch": str(torch.__version__),
            "ranks": [{"node": r["node"], "host": r["host"], **r["hardware"]} for r in ranks]}


def parent_of(spec: Any, module: pl.LightningModule) -> dict[str, Any] | None:
    """The parent's checked record: the one given, else one `load_parent_weights` left."""
    from depth.record.lineage import ATTRIBUTE, check_parent

    if spec is not None:
        from depth.tracking.sources import resolve_parent

        return resolve_parent(spec)
    loaded = getattr(module, ATTRIBUTE, None)
    return check_parent(loaded, "loaded weights") if loaded else None
