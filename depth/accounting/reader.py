"""`BridgingReader`: reads any `EnergyMeter` and never raises; failures are bridged.

A device whose read fails is estimated as its last measured power times the gap, and
flagged; the count goes on from its measured value when it answers again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence

from depth.meters.base import MeterReadError


class BridgingReader:
    """Reads a meter and never raises: devices that fail are bridged by last power x gap.

    A failing device is estimated as its last measured power (over at least
    `power_window_s`) times the time since its last good read; the estimate is counted in
    ``bridged_j`` and described in ``flags``, and `on_failure` is called once per device.
    A device that answers again continues from its measured value (never below what was
    already reported). Thread-safe: the sidecar thread and the training thread share it.

    Args:
        read: The meter's ``read``.
        devices: The device labels to report.
        on_failure: Called once per failing device with a one-line message (e.g. a warning).
        clock: Monotonic clock (injectable for tests).
    """

    def __init__(self, read: Callable[[], Mapping[str, float]], devices: Sequence[str],
                 on_failure: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, power_window_s: float = 1.0):
        self._read = read
        self.devices = list(devices)
        self._on_failure = on_failure or (lambda message: None)
        self._clock = clock
        self._window_s = power_window_s
        self._lock = threading.Lock()
        self._value: dict[str, float] = {}
        self._last_good: dict[str, tuple[float, float]] = {}
        self._ref: dict[str, tuple[float, float]] = {}  # for the power estimate
        self.power_w: dict[str, float] = {}
        self.bridged_j: dict[str, float] = {}
        self.failing: dict[str, str] = {}
        self.flags: list[str] = []

    def read(self) -> tuple[float, dict[str, float]]:
        """(monotonic time, cumulative joules per device) — measured, or bridged."""
        with self._lock:
            failed: dict[str, str] = {}
            try:
                raw = self._read()  # only read here: no copy
            except MeterReadError as err:
                raw = dict(err.partial)
                failed = {d: err.reason for d in self.devices if d not in raw}
            except Exception as err:  # a third-party meter: every device failed
                raw = {}
                failed = {d: f"{type(err).__name__}: {err}" for d in self.devices}
            t_s = self._clock()
            good = self._good
            for device in self.devices:
                if device in raw:  # the failed devices are exactly those missing from raw
                    good(device, t_s, float(raw[device]))
                else:
                    self._bridge(device, t_s, failed.get(device, "no reading"))
            return t_s, dict(self._value)

    def _good(self, device: str, t_s: float, energy_j: float) -> None:
        # Called for every device at every step: kept to a few dict operations.
        if self.failing and device in self.failing:
            self.flags.append(f"{device}: answered again after "
                              f"{self.bridged_j.get(device, 0.0):.3f} J were bridged")
            del self.failing[device]
        previous = self._value.get(device)
        value = previous if previous is not None and previous > energy_j else energy_j  # max
        self._value[device] = value
        self._last_good[device] = (t_s, value)
        ref = self._ref.get(device)
        if ref is None:
            self._ref[device] = (t_s, value)
        elif t_s - ref[0] >= self._window_s:
            self.power_w[device] = (value - ref[1]) / (t_s - ref[0])
            self._ref[device] = (t_s, value)

    def _bridge(self, device: str, t_s: float, reason: str) -> None:
        if device not in self.failing:
            self.failing[device] = reason
            power = self.power_w.get(device)
            if power is None:  # no full window yet: the power since the first good read
                ref, last = self._ref.get(device), self._last_good.get(device)
                power = ((last[1] - ref[1]) / (last[0] - ref[0])
                         if ref and last and last[0] > ref[0] else 0.0)
                self.power_w[device] = power
            message = (f"{device}: meter read failed ({reason}); bridging with its last "
                       f"power {power:.1f} W x gap time (an estimate)")
            self.flags.append(message)
            self._on_failure(message)
        last_t, last_e = self._last_good.get(device, (t_s, self._value.get(device, 0.0)))
        gap_j = self.power_w.get(device, 0.0) * max(t_s - last_t, 0.0)
        value = max(self._value.get(device, 0.0), last_e + gap_j)
        self.bridged_j[device] = self.bridged_j.get(device, 0.0) + value - self._value.get(
            device, 0.0)
        self._value[device] = value
