"""Ranks: which devices each rank meters, under which labels, and their readings combined.

NVML counters cover a whole GPU, so each rank meters only the device it uses (and the CPU
once per node); labels carry the node and rank when there are several. Two ranks on the
same GPU (same UUID) count it once. Readings are combined with one small collective at
log points and checkpoints, never at other steps.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch

from depth.accounting.reader import UNMEASURED, BridgingReader, power_limits_w
from depth.lightning.facts import run_hardware
from depth.meters import EnergyMeter, MeterUnavailable, auto_meter, make_meter

Observation = tuple[float, dict[str, float]]


def meter_for_rank(spec: EnergyMeter | str, trainer: pl.Trainer) -> tuple[EnergyMeter | None, bool]:
    """The meter this rank reads, and whether the callback made (so must close) it.

    ``"auto"`` meters the GPU this rank uses, and the CPU/DRAM on local rank 0 only.

    Raises:
        MeterUnavailable: No meter for this rank (one line).
    """
    if not isinstance(spec, str):
        return spec, False
    local_rank = int(getattr(trainer, "local_rank", 0))
    device = trainer.strategy.root_device
    cpu = "auto" if local_rank == 0 else "off"  # CPU/DRAM once per node
    try:
        if spec == "auto":
            if device.type == "cuda":
                return auto_meter([device.index or 0], cpu=cpu), True
            return auto_meter(gpu="off", cpu=cpu), True
        return make_meter(spec), True
    except MeterUnavailable as err:
        if local_rank != 0 and cpu == "off":
            return None, False  # a CPU-only rank on a node whose rank 0 meters the CPU
        raise MeterUnavailable(f"depth: no energy meter for this run: {err}") from None


def shared_gpus(ranks: Sequence[Mapping[str, Any]],
                warn: Callable[[str], None] | None = None) -> set[str]:
    """GPUs metered by two ranks (same UUID): counted once, on the lower rank."""
    seen: dict[str, str] = {}
    excluded: set[str] = set()
    for r in ranks:
        for label, uuid in r["uuids"].items():
            if uuid in seen:
                excluded.add(label)
                if warn is not None:
                    warn(f"{label} is the same GPU as {seen[uuid]} ({uuid}); two ranks share "
                         "it, so it is counted once")
            else:
                seen[uuid] = label
    return excluded


class Ranks:
    """This rank's meter under run-wide labels, and every rank's readings combined.

    Args:
        trainer: The trainer (world size, ranks, strategy for the collectives).
        meter: This rank's meter (``None``: a rank with nothing to meter).
        user_meter: The user passed the meter: on local ranks other than 0 its CPU/DRAM
            devices are left out (rank 0 of the node reports them).
        warn: Where one-line warnings go.
    """

    def __init__(self, trainer: pl.Trainer, meter: EnergyMeter | None, user_meter: bool,
                 warn: Callable[[str], None]):
        self.world = int(trainer.world_size)
        self.rank = int(trainer.global_rank)
        self._strategy = trainer.strategy
        devices = list(meter.devices()) if meter is not None else []
        if int(getattr(trainer, "local_rank", 0)) != 0 and user_meter:
            devices = [d for d in devices if not d.startswith(("cpu", "dram"))]
        prefix = f"node{trainer.node_rank}/rank{self.rank}/" if self.world > 1 else ""
        self.labels = {d: prefix + d for d in devices}  # meter label -> ledger label
        self._relabel = bool(prefix)
        methods = getattr(meter, "methods", None)
        local_methods = methods() if callable(methods) else {d: meter.method for d in devices}
        hardware = dict(getattr(meter, "hardware", dict)()) if meter is not None else {}
        info = {"labels": list(self.labels.values()),
                "methods": {self.labels[d]: local_methods.get(d, "unknown") for d in devices},
                "uuids": {self.labels[g["device"]]: g["uuid"] for g in hardware.get("gpus", [])
                          if g.get("device") in self.labels and g.get("uuid")},
                "hardware": hardware, "node": int(trainer.node_rank), "host": platform.node()}
        ranks = self.gather_object(info)
        self.rank_labels = [r["labels"] for r in ranks]
        self.excluded = shared_gpus(ranks, warn if self.rank == 0 else None)
        self.methods = {d: m for r in ranks for d, m in r["methods"].items()
                        if d not in self.excluded}  # ledger label -> method, every rank
        self.method = "+".join(sorted(set(self.methods.values()))) or "none"
        self.hardware = run_hardware(trainer, ranks)
        self.reader = BridgingReader(meter.read if meter is not None else dict, devices,
                                     on_failure=warn, limits_w=power_limits_w(hardware))
        self._meter = meter

    def current_methods(self) -> dict[str, str]:
        """`methods`, with this rank's devices that have not given one valid reading yet
        as ``unmeasured`` (other ranks' are not known here)."""
        unmeasured = self.reader.unmeasured
        if not unmeasured:
            return dict(self.methods)
        labels = {self.labels[d] for d in unmeasured}
        return {d: UNMEASURED if d in labels else m for d, m in self.methods.items()}

    def gather_object(self, obj: Any) -> list[Any]:
        """`obj` from every rank (a list of one without a process group)."""
        if self.world == 1 or not torch.distributed.is_initialized():
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def read_local(self) -> Observation:
        """This rank's reading under its ledger labels."""
        t_s, values = self.reader.read()
        if self._relabel:
            values = {self.labels[d]: v for d, v in values.items()}
        return t_s, values

    def observe(self, tokens: int | None,
                collective: bool = True) -> tuple[list[Observation], int | None]:
        """This rank's reading; with several ranks and `collective`, every rank's (and the
        sum of their tokens) through one all_gather of a small float64 tensor."""
        if self.world == 1:  # the common case, at every step: no relabelling, no collective
            return [self.reader.read()], tokens
        t_s, values = self.read_local()
        if not collective:
            return [(t_s, values)], tokens
        width = 2 + max(len(labels) for labels in self.rank_labels)
        row = [t_s, math.nan if tokens is None else float(tokens),
               *[values[label] for label in self.rank_labels[self.rank]]]
        row += [math.nan] * (width - len(row))
        local = torch.tensor(row, dtype=torch.float64, device=self._strategy.root_device)
        rows = self._strategy.all_gather(local).reshape(self.world, width).cpu().tolist()
        observations: list[Observation] = []
        total: int | None = 0
        for rank, r in enumerate(rows):
            labels = self.rank_labels[rank]
            observations.append((r[0], {label: r[2 + i] for i, label in enumerate(labels)
                                        if label not in self.excluded}))
            total = None if (total is None or math.isnan(r[1])) else total + int(r[1])
        return observations, total

    def read_now(self, sync: bool) -> list[Observation]:
        """Every rank's reading now; with `sync`, after this rank's queued CUDA work."""
        if sync:
            self.synchronize()
        return self.observe(tokens=None)[0]

    def facts(self) -> dict[str, Any]:
        """What a record says about how the joules were read: ``methods`` per device, the
        combined ``method`` and the run's ``hardware``."""
        return {"methods": self.methods, "method": self.method, "hardware": self.hardware}

    def flags(self) -> list[str]:
        """What went wrong reading: the reader's flags, then the meter's own."""
        return [*self.reader.flags, *getattr(self._meter, "flags", list)()]

    def synchronize(self) -> None:
        """Waits for this rank's queued CUDA work, so a read covers it."""
        device = self._strategy.root_device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
