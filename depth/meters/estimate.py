"""A labelled estimate of CPU and RAM energy for machines with no energy sensor.

Uses CodeCarbon's models (codecarbon >= 3; the CPU as in its "process" tracking mode):

- CPU: the TDP of the detected CPU from CodeCarbon's table (or its default of 4 W per
  thread when the model is unknown), times *this process's* share of the machine's CPU
  capacity, as CodeCarbon's "process" mode does: ``P = TDP * cpu_s / (wall_s * n_cpus)``,
  where ``cpu_s`` is the CPU time of this process and its children (psutil). Another
  process's work on the same machine is not billed to this one; neither is idle power;
- RAM: CodeCarbon's constant DIMM-count model for the machine's memory size (the whole
  machine's RAM, not this process's share).

A background thread samples the CPU time every `period_s` and integrates.
``read()`` copies two floats under a lock: microseconds, never a blocking measurement.
These are estimates, not measurements: TDP is not power, and CPU time is not energy.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any, Iterator

from depth.meters.base import BackgroundSampler, MeterUnavailable

ATTRIBUTION = ("process CPU time x TDP share: P = TDP * cpu_s / (wall_s * n_cpus), cpu_s of "
               "this process and its children (psutil); other processes are not billed")


def cpu_power_w(tdp_w: float, share: float) -> float:
    """CodeCarbon's process-mode CPU power for a share of the machine's CPUs (>= 0).

    Not capped at 1: a reaped child's CPU time arrives in one lump, and the joules must
    still add up to TDP x cpu_s / n_cpus over the run."""
    return tdp_w * max(share, 0.0)


class ProcessCpuLoad:
    """This process's (and its children's) share of the machine's CPU capacity between
    successive calls: CPU seconds over wall seconds times logical CPUs.

    Args:
        children_every_s: How often the child-process tree is listed again; listing reads
            every ``/proc/<pid>``, too slow for every sample on a busy node. A child born
            in between is counted from the next listing on, its earlier CPU time included.
        pid: Another process to follow instead of this one (e.g. a model server that
            `depth eval --endpoint` measures); ``None`` for this process.
    """

    def __init__(self, children_every_s: float = 1.0, *, pid: int | None = None) -> None:
        import psutil

        self._psutil = psutil
        self._process = psutil.Process(pid)
        self._cpus = psutil.cpu_count() or 1
        self._children_every_s = children_every_s
        self._children: list[Any] = []
        self._listed_at = -math.inf
        self._last = (time.monotonic(), self._cpu_s())

    def _cpu_s(self) -> float:
        """User + system seconds of this process, its reaped children, and its live ones."""
        now = time.monotonic()
        if now - self._listed_at >= self._children_every_s:
            try:
                self._children = self._process.children(recursive=True)
            except self._psutil.Error:
                self._children = []
            self._listed_at = now
        t = self._process.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        for child in self._children:
            try:
                c = child.cpu_times()
            except self._psutil.Error:  # exited: its time moves to children_* once reaped
                continue
            total += c.user + c.system
        return total

    def __call__(self) -> float:
        now, cpu_s = time.monotonic(), self._cpu_s()
        wall_s, used_s = now - self._last[0], cpu_s - self._last[1]
        self._last = (now, cpu_s)
        return 0.0 if wall_s <= 0 else max(used_s / (wall_s * self._cpus), 0.0)


@contextmanager
def _quiet_codecarbon() -> Iterator[None]:
    """CodeCarbon warns on unknown CPUs; we report the same fact in our own `basis`."""
    logger = logging.getLogger("codecarbon")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def codecarbon_cpu_tdp() -> tuple[str, float, bool]:
    """(CPU model, TDP in W, whether the TDP came from CodeCarbon's table)."""
    from codecarbon.core.cpu import DEFAULT_POWER_PER_CORE, TDP
    from codecarbon.core.util import count_cpus

    with _quiet_codecarbon():
        tdp = TDP()
        in_table = (tdp.model != "Unknown"
                    and tdp._get_cpu_power_from_registry(tdp.model) is not None)
    if tdp.tdp is None:  # CPU model not detectable: CodeCarbon's per-thread default
        return tdp.model, float(count_cpus() * DEFAULT_POWER_PER_CORE), False
    return tdp.model, float(tdp.tdp), in_table


def codecarbon_ram_power_w() -> float:
    """CodeCarbon's machine RAM power model (DIMM count from memory size)."""
    from codecarbon.external.ram import RAM

    with _quiet_codecarbon():
        return float(RAM(tracking_mode="machine").total_power().W)


class EstimateMeter:
    """Estimated CPU (``cpu:0``) and RAM (``dram:0``) joules, labelled ``estimate``.

    Args:
        reason: Why nothing could be measured; kept in ``reason`` and shown to users.
        tdp_w: CPU TDP in watts; looked up through CodeCarbon when ``None``.
        ram_power_w: RAM power in watts; CodeCarbon's model when ``None``.
        include_dram: Whether ``dram:0`` is reported.
        period_s: CPU-time sampling period of the background thread.
        cpu_load: A callable returning this process's share of the machine's CPUs since
            its previous call (defaults to `ProcessCpuLoad`); injectable for tests.
    """

    method = "estimate"

    def __init__(self, reason: str = "no energy sensor is readable on this machine", *,
                 tdp_w: float | None = None, ram_power_w: float | None = None,
                 include_dram: bool = True, period_s: float = 0.1,
                 cpu_load: Callable[[], float] | None = None):
        if period_s <= 0:
            raise ValueError(f"period_s must be > 0, got {period_s}")
        self.reason = reason
        if tdp_w is None or (ram_power_w is None and include_dram):
            try:
                import codecarbon  # noqa: F401
            except ImportError as err:  # converted at the boundary, like vendor errors
                raise MeterUnavailable(f"estimate: codecarbon is not installed ({err})") from None
        if tdp_w is None:
            cpu_model, tdp_w, in_table = codecarbon_cpu_tdp()
            tdp_source = ("CodeCarbon's CPU table" if in_table else
                          "CodeCarbon's default of 4 W per thread (CPU model not in its table)")
        else:
            cpu_model, tdp_source = "user-supplied", "user-supplied"
        if ram_power_w is None and include_dram:
            ram_power_w = codecarbon_ram_power_w()
        self.tdp_w = float(tdp_w)
        self.ram_power_w = float(ram_power_w or 0.0)
        self.include_dram = include_dram
        self.basis: dict[str, Any] = {
            "cpu_model": cpu_model, "tdp_w": self.tdp_w, "tdp_source": tdp_source,
            "cpu_model_formula": ATTRIBUTION, "attribution": "process",
            "ram_power_w": self.ram_power_w if include_dram else None,
            "ram_source": "CodeCarbon RAM model (DIMM count from memory size)" if include_dram
            else None,
        }
        self._load = cpu_load if cpu_load is not None else ProcessCpuLoad()
        self._lock = threading.Lock()
        self._t0 = self._t_last = time.monotonic()
        self._cpu_j = 0.0
        self._last_power_w = cpu_power_w(self.tdp_w, 0.0)
        self._sampler = BackgroundSampler(self._sample, period_s, "depth-estimate")

    def devices(self) -> list[str]:
        return ["cpu:0", "dram:0"] if self.include_dram else ["cpu:0"]

    def _sample(self) -> None:
        load = self._load()  # this process's share over [t_last, now]
        now = time.monotonic()
        power_w = cpu_power_w(self.tdp_w, load)
        with self._lock:
            self._cpu_j += power_w * (now - self._t_last)
            self._t_last = now
            self._last_power_w = power_w

    def read(self) -> dict[str, float]:
        """Estimated cumulative joules: CPU up to the last sample, RAM up to now."""
        self._sampler.ensure_started()
        with self._lock:
            cpu_j = self._cpu_j
        out = {"cpu:0": cpu_j}
        if self.include_dram:
            out["dram:0"] = self.ram_power_w * (time.monotonic() - self._t0)
        return out

    def power_w(self) -> dict[str, float]:
        """The latest estimated power per device."""
        with self._lock:
            out = {"cpu:0": self._last_power_w}
        if self.include_dram:
            out["dram:0"] = self.ram_power_w
        return out

    def hardware(self) -> dict[str, object]:
        return {"cpu_model": self.basis["cpu_model"]}

    def close(self) -> None:
        self._sampler.stop()
