"""The `EnergyMeter` protocol, depth's meter errors, and arithmetic shared by backends.

Every backend reports *cumulative joules per device since the meter was created*.
Hardware counters wrap around or reset; `CounterTracker` turns such a raw counter into a
monotonic cumulative value and records what it had to bridge.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@runtime_checkable
class EnergyMeter(Protocol):
    """Anything that reports cumulative joules per device.

    Attributes:
        method: How joules are obtained: ``"nvml-counter"``, ``"nvml-power"``, ``"rapl"``,
            ``"estimate"``, or a third party's own name.
    """

    method: str

    def devices(self) -> Sequence[str]:
        """Stable device labels, e.g. ``"gpu:0"``, ``"cpu:0"``."""
        ...

    def read(self) -> Mapping[str, float]:
        """Cumulative joules per device since the meter was created; never decreases."""
        ...

    def close(self) -> None:
        """Release the hardware handles and stop any background sampler."""
        ...


class MeterError(RuntimeError):
    """Base class of every error a depth meter raises (vendor errors are converted to it)."""


class MeterUnavailable(MeterError):
    """The source cannot be used on this machine; the message says why, in one line."""


class CounterNotSupported(MeterUnavailable):
    """The device exists but has no energy counter; a power-sampling backend may replace it."""


class MeterPermissionError(MeterUnavailable):
    """The source exists but this user may not read it; the message says how to grant access."""


class MeterReadError(MeterError):
    """A read failed mid-run (GPU lost, driver error).

    Attributes:
        device: The label of the device that failed.
        partial: Fresh cumulative joules of the devices that could still be read, so a
            caller can keep those and bridge only the failed one.
    """

    def __init__(self, device: str, reason: str, partial: Mapping[str, float] | None = None):
        super().__init__(f"{device}: {reason}")
        self.device = device
        self.reason = reason
        self.partial: dict[str, float] = dict(partial or {})


@dataclass
class CounterTracker:
    """Turns a raw, possibly wrapping or resetting, energy counter into cumulative joules.

    Args:
        scale_j: Joules per raw unit (1e-3 for NVML's mJ, 1e-6 for RAPL's uJ).
        max_range: The raw value at which the counter wraps to zero, when known (RAPL's
            ``max_energy_range_uj``). When ``None`` a decrease is a *reset* (NVML after a
            driver reload), not a wrap.

    A decrease with a known range is a wraparound: the increment is ``raw + max_range -
    last``. A decrease without one is a reset: the counter restarted from zero, so the
    energy since the reset (``raw``) is the best lower bound for the interval; the reset is
    counted in ``resets`` so that records can flag it. Joules never go negative.
    """

    scale_j: float
    max_range: float | None = None
    energy_j: float = 0.0
    last_raw: float | None = None
    wraps: int = 0
    resets: int = 0

    def start(self, raw: float) -> None:
        """Sets the origin: cumulative joules count from this raw value."""
        self.last_raw = raw
        self.energy_j = 0.0

    def update(self, raw: float) -> float:
        """Feeds one raw reading; returns cumulative joules since `start`."""
        if self.last_raw is None:
            self.start(raw)
            return 0.0
        delta = raw - self.last_raw
        if delta < 0:
            if self.max_range is not None:
                delta = raw + self.max_range - self.last_raw
                self.wraps += 1
            else:
                delta = raw
                self.resets += 1
        self.energy_j += delta * self.scale_j
        self.last_raw = raw
        return self.energy_j


class PowerIntegrator:
    """Trapezoid integration of power samples into energy, safe to share across threads.

    The caller's ``read`` returns the integral up to the last sample (never an
    extrapolation), so the value never decreases and a read costs one lock acquisition.
    """

    def __init__(self, devices: Sequence[str]):
        self._lock = threading.Lock()
        self._energy_j = {d: 0.0 for d in devices}
        self._last: dict[str, tuple[float, float]] = {}  # device -> (t_s, power_w)

    def add(self, t_s: float, power_w: Mapping[str, float]) -> None:
        """Adds one sample per device taken at monotonic time `t_s`."""
        with self._lock:
            for device, p_w in power_w.items():
                prev = self._last.get(device)
                if prev is not None and t_s > prev[0]:
                    self._energy_j[device] += 0.5 * (prev[1] + p_w) * (t_s - prev[0])
                self._last[device] = (t_s, p_w)

    def energy_j(self) -> dict[str, float]:
        """Cumulative joules per device up to the last sample."""
        with self._lock:
            return dict(self._energy_j)

    def last_power_w(self) -> dict[str, float]:
        """The most recent power sample per device."""
        with self._lock:
            return {d: p for d, (_, p) in self._last.items()}


class BackgroundSampler:
    """Calls `sample` every `period_s` on a daemon thread until `stop`.

    Started lazily by the owning meter (first ``read``), so that probing a source costs no
    thread. An exception in `sample` stops the loop and is kept in ``error``.
    """

    def __init__(self, sample: Callable[[], None], period_s: float, name: str):
        self._sample = sample
        self.period_s = period_s
        self._name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self._start_lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def ensure_started(self) -> None:
        if self._thread is not None:
            return
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            try:
                self._sample()
            except BaseException as err:  # kept for the reader; the thread must not die silently
                self.error = err
                return
            next_t += self.period_s
            delay = next_t - time.monotonic()
            if delay < 0:  # fell behind (suspended, overloaded): resynchronize, no burst
                next_t = time.monotonic()
                delay = 0.0
            self._stop.wait(delay)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(1.0, 2 * self.period_s))


@dataclass
class Source:
    """One energy source that `auto_meter` considered.

    Attributes:
        method: The backend's method name.
        chosen: Whether it is part of the combined meter.
        devices: The device labels it covers (chosen) or would have covered.
        reason: Why it was chosen or rejected, in one line.
    """

    method: str
    chosen: bool
    reason: str
    devices: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {"method": self.method, "chosen": self.chosen, "devices": self.devices,
                "reason": self.reason}
