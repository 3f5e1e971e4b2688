"""`BridgingReader`: reads any `EnergyMeter` and never raises; faults are bridged and flagged.

Whatever the meter, a reading is checked before it is counted:

- a read that fails, or returns NaN, inf, a negative or a non-number, is a *failed read*:
  the device is estimated as its last measured power times the gap, and flagged;
- a decrease is a *counter reset*: the gap is bridged the same way and the count goes on
  from the new value as its baseline;
- an *implausible jump*, one implying more power than the device can draw (`max_power_w`),
  is bridged and flagged like a reset, never counted.

A device that has never given a valid reading is *unmeasured* (`unmeasured`): its 0 J is
no measurement, and the record says so (`depth.record.build`).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from depth.meters.base import MeterReadError

UNMEASURED = "unmeasured"  # the method of a device that never gave a valid reading
# Upper bounds of the power a device of each class can draw, when its own limit is not
# known: generous (a whole GB200 board is ~2.7 kW), so that only a broken reading exceeds them.
CLASS_MAX_POWER_W = {"gpu": 4000.0, "cpu": 2000.0, "dram": 1000.0}
OTHER_MAX_POWER_W = 20000.0  # a third party's device of unknown class: a whole server
LIMIT_FACTOR = 3.0  # a device's known power limit times this is implausible
MIN_JUMP_WINDOW_S = 1.0  # a counter may bunch up to this long of energy into one update
FAULTS_LISTED = 3  # per device and kind; more are counted, so flags stay short


def power_limits_w(hardware: Mapping[str, Any]) -> dict[str, float]:
    """The power limit of each device a meter's ``hardware()`` names (``power_limit_w``)."""
    out = {}
    for gpu in hardware.get("gpus", []) or []:
        limit = gpu.get("power_limit_w") if isinstance(gpu, Mapping) else None
        if isinstance(limit, (int, float)) and limit > 0 and gpu.get("device"):
            out[str(gpu["device"])] = float(limit)
    return out


def max_power_w(device: str, limits_w: Mapping[str, float]) -> float:
    """The most power `device` can plausibly draw: `LIMIT_FACTOR` x its limit when known,
    else the bound of its class (the label's prefix, ``gpu:0`` -> ``gpu``)."""
    limit = limits_w.get(device)
    if limit is not None:
        return LIMIT_FACTOR * limit
    return CLASS_MAX_POWER_W.get(device.split(":", 1)[0], OTHER_MAX_POWER_W)


class BridgingReader:
    """Reads a meter and never raises: faulty readings are bridged by last power x gap.

    A failing device is estimated as its last measured power (over at least
    `power_window_s`) times the time since its last good read; the estimate is counted in
    ``bridged_j`` and described in ``flags``, and `on_failure` is called once per failure.
    A device that answers again continues from its measured value when the counter kept
    counting, else from the bridged value. Resets and implausible jumps are bridged the
    same way, and the count continues from the new reading. Reported values never
    decrease and are always finite. Thread-safe: the sidecar thread and the training
    thread share it.

    Args:
        read: The meter's ``read``.
        devices: The device labels to report.
        on_failure: Called with a one-line message at each new fault (e.g. a warning).
        clock: Monotonic clock (injectable for tests).
        power_window_s: The least time the power estimate is taken over.
        limits_w: Known power limits per device (`power_limits_w`); others get the bound
            of their class.
    """

    def __init__(self, read: Callable[[], Mapping[str, float]], devices: Sequence[str],
                 on_failure: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, power_window_s: float = 1.0,
                 limits_w: Mapping[str, float] | None = None):
        self._read = read
        self.devices = list(devices)
        self._on_failure = on_failure or (lambda message: None)
        self._clock = clock
        self._window_s = power_window_s
        self._max_w = {d: max_power_w(d, limits_w or {}) for d in self.devices}
        # An increase up to max_w x MIN_JUMP_WINDOW_S is never a jump: one comparison decides
        # most reads (the same bound as max_w x max(gap, MIN_JUMP_WINDOW_S), split in two).
        self._jump_floor_j = {d: w * MIN_JUMP_WINDOW_S for d, w in self._max_w.items()}
        self._lock = threading.Lock()
        self._value: dict[str, float] = {}
        # The last valid reading: (t_s, raw joules, reported joules then).
        self._last: dict[str, tuple[float, float, float]] = {}
        self._offset: dict[str, float] = {}  # reported = raw + offset
        self._ref: dict[str, tuple[float, float]] = {}  # for the power estimate
        self._started = clock()
        self.power_w: dict[str, float] = {}
        self.bridged_j: dict[str, float] = {}
        self.failing: dict[str, str] = {}
        self._flags: list[str] = []
        self._faults: dict[tuple[str, str], int] = {}  # (device, kind) -> how many

    @property
    def flags(self) -> list[str]:
        """One line per fault (the first few of each kind per device), then the counts."""
        counts = [f"{device}: {n} {kind}s in all" for (device, kind), n in self._faults.items()
                  if n > FAULTS_LISTED]
        return [*self._flags, *counts]

    def _fault(self, device: str, kind: str, message: str) -> None:
        """Flags (and reports) a fault; past `FAULTS_LISTED` of a kind, only counts it."""
        n = self._faults[(device, kind)] = self._faults.get((device, kind), 0) + 1
        if n <= FAULTS_LISTED:
            self._flags.append(message)
            self._on_failure(message)

    @property
    def unmeasured(self) -> list[str]:
        """The devices that have not yet given one valid reading."""
        return [d for d in self.devices if d not in self._last]

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
            last_of, values, refs = self._last, self._value, self._ref
            for device in self.devices:
                value = raw.get(device)
                last = last_of.get(device)
                # The common path, inlined (every device, every step): a float, measured
                # before, not failing, not below its last value, not a jump, as in `_good`.
                if type(value) is float and last is not None and not self.failing:
                    increase_j = value - last[1]
                    if (0.0 <= value < math.inf and increase_j >= 0.0
                            and (increase_j <= self._jump_floor_j[device]
                                 or increase_j <= self._max_w[device] * (t_s - last[0]))):
                        energy_j = values[device] = value + self._offset[device]
                        last_of[device] = (t_s, value, energy_j)
                        ref = refs[device]
                        if t_s - ref[0] >= self._window_s:
                            self.power_w[device] = (energy_j - ref[1]) / (t_s - ref[0])
                            refs[device] = (t_s, energy_j)
                        continue
                try:
                    energy_j = float(value)  # type: ignore[arg-type]
                except (TypeError, ValueError):
                    energy_j = math.nan
                if 0.0 <= energy_j < math.inf:  # False for NaN
                    self._good(device, t_s, energy_j)
                else:  # the failed devices are exactly those missing from raw
                    reason = failed.get(device) or (f"invalid reading {value!r}"
                                                    if device in raw else "no reading")
                    self._bridge(device, t_s, reason)
            return t_s, dict(self._value)

    def _good(self, device: str, t_s: float, raw_j: float) -> None:
        """A valid reading: checked for a reset or a jump, then counted (`read` inlines the
        common case: keep the two in step)."""
        last = self._last.get(device)
        if last is None:
            self._first(device, t_s, raw_j)
        else:
            increase_j = raw_j - last[1]
            if increase_j < 0:
                self._rebase(device, t_s, raw_j, "reset", f"counter went backwards "
                             f"({last[1]:.6g} -> {raw_j:.6g} J): a reset")
            elif increase_j > self._max_w[device] * max(t_s - last[0], MIN_JUMP_WINDOW_S):
                self._rebase(device, t_s, raw_j, "implausible jump", f"implausible jump of "
                             f"{increase_j:.6g} J in {t_s - last[0]:.3g} s (more than "
                             f"{self._max_w[device]:g} W)")
            elif self.failing and device in self.failing:
                self._recover(device, t_s, raw_j)
            else:
                self._value[device] = raw_j + self._offset[device]
        value = self._value[device]
        self._last[device] = (t_s, raw_j, value)
        ref = self._ref.get(device)
        if ref is None:
            self._ref[device] = (t_s, value)
        elif t_s - ref[0] >= self._window_s:
            self.power_w[device] = (value - ref[1]) / (t_s - ref[0])
            self._ref[device] = (t_s, value)

    def _first(self, device: str, t_s: float, raw_j: float) -> None:
        """The first valid reading: the baseline. After failed reads, the count starts here
        (the energy before it is not known, and the raw value may include energy spent
        before this fit)."""
        previous = self._value.get(device)
        self._offset[device] = 0.0 if previous is None else previous - raw_j
        self._value[device] = raw_j + self._offset[device]
        if device in self.failing:
            del self.failing[device]
            self._flags.append(f"{device}: first valid reading {t_s - self._started:.3g} s "
                              "after the start; the energy before it is not counted")

    def _recover(self, device: str, t_s: float, raw_j: float) -> None:
        """A device answers again: its counter's value if it kept counting past the bridge,
        else the bridged value (no freeze while the counter catches up)."""
        del self.failing[device]
        self._flags.append(f"{device}: answered again after "
                           f"{self.bridged_j.get(device, 0.0):.3f} J were bridged")
        bridged = self._value[device]
        if raw_j + self._offset[device] < bridged:
            self._offset[device] = bridged - raw_j
        self._value[device] = raw_j + self._offset[device]

    def _rebase(self, device: str, t_s: float, raw_j: float, kind: str, what: str) -> None:
        """A reset or a jump: the gap is bridged, and the count goes on from `raw_j`."""
        self.failing.pop(device, None)
        value = self._bridged_value(device, t_s)
        self.bridged_j[device] = self.bridged_j.get(device, 0.0) + value - self._value[device]
        self._value[device] = value
        self._offset[device] = value - raw_j
        self._ref[device] = (t_s, value)  # the power estimate starts again here
        self._fault(device, kind, f"{device}: {what}; bridged with its last power "
                                  f"{self.power_w.get(device, 0.0):.1f} W x gap time (an "
                                  "estimate), counting on from the new reading")

    def _last_power_w(self, device: str) -> float:
        power = self.power_w.get(device)
        if power is None:  # no full window yet: the power since the first good read
            ref, last = self._ref.get(device), self._last.get(device)
            power = ((last[2] - ref[1]) / (last[0] - ref[0])
                     if ref and last and last[0] > ref[0] else 0.0)
            self.power_w[device] = power
        return power

    def _bridged_value(self, device: str, t_s: float) -> float:
        """Last good value plus last power x the time since it (never below the value)."""
        power = self._last_power_w(device)
        last_t, _, last_e = self._last.get(device, (t_s, 0.0, self._value.get(device, 0.0)))
        return max(self._value.get(device, 0.0), last_e + power * max(t_s - last_t, 0.0))

    def _bridge(self, device: str, t_s: float, reason: str) -> None:
        if device not in self.failing:
            self.failing[device] = reason
            if device in self._last:
                message = (f"{device}: meter read failed ({reason}); bridging with its last "
                           f"power {self._last_power_w(device):.1f} W x gap time (an estimate)")
            else:
                message = (f"{device}: meter read failed ({reason}) before any valid reading;"
                           " its energy is unmeasured until it answers")
            self._fault(device, "failed read", message)
        value = self._bridged_value(device, t_s)
        previous = self._value.get(device, 0.0)
        self.bridged_j[device] = self.bridged_j.get(device, 0.0) + value - previous
        self._value[device] = value
