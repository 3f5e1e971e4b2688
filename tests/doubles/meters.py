"""Deterministic energy meters for callback tests (the hardware boundary, faked).

`ClockMeter`: each device draws a constant power, so cumulative joules are power x time;
with `update_s` the value refreshes only every `update_s` seconds, like NVML's counter.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping

from depth.meters import MeterReadError


class ClockMeter:
    method = "test-clock"

    def __init__(self, power_w: Mapping[str, float] | None = None, update_s: float = 0.0,
                 clock: Callable[[], float] = time.monotonic,
                 uuids: Mapping[str, str] | None = None):
        self.power_w = dict(power_w or {"gpu:0": 100.0})
        self.update_s = update_s
        self.clock = clock
        self.t0 = clock()
        self.uuids = dict(uuids or {})
        self.fail: dict[str, str] = {}  # device -> reason: reads of it fail while set
        self.closed = False
        self.reads = 0

    def devices(self) -> list[str]:
        return list(self.power_w)

    def elapsed_s(self) -> float:
        t = self.clock() - self.t0
        return math.floor(t / self.update_s) * self.update_s if self.update_s else t

    def read(self) -> dict[str, float]:
        self.reads += 1
        t = self.elapsed_s()
        values = {d: p * t for d, p in self.power_w.items()}
        for device, reason in self.fail.items():
            partial = {d: v for d, v in values.items() if d not in self.fail}
            raise MeterReadError(device, reason, partial=partial)
        return values

    def hardware(self) -> dict[str, object]:
        return {"gpus": [{"device": d, "uuid": u, "name": "test GPU"}
                         for d, u in self.uuids.items()]}

    def close(self) -> None:
        self.closed = True


class ScriptedMeter:
    """Returns the readings it is given, one per read, then goes on by `tail_j` per read.

    Each reading is a number (for `device`), a dict of readings per device, or an
    exception instance, which that read raises. Readings may be anything a broken meter
    returns (NaN, inf, negative, a decrease, a huge jump). After the script, each read adds
    `tail_j` to the last numeric reading (``None``: every later read raises `fail_with`).
    """

    def __init__(self, readings: list[object], device: str = "gpu:0",
                 method: str = "test-script", tail_j: float | None = 10.0,
                 fail_with: BaseException | None = None,
                 hardware: Mapping[str, object] | None = None):
        self.script = list(readings)
        self.device = device
        self.method = method
        self.tail_j = tail_j
        self.fail_with = fail_with or MeterReadError(device, "GPU is lost")
        self._hardware = dict(hardware or {})
        self.reads = 0
        self.returned: list[object] = []  # what each read gave (or raised)
        self._last = 0.0
        self.closed = False

    def devices(self) -> list[str]:
        return [self.device]

    def read(self) -> dict[str, float]:
        self.reads += 1
        if self.script:
            item = self.script.pop(0)
        elif self.tail_j is None:
            item = self.fail_with
        else:
            item = self._last + self.tail_j
        self.returned.append(item)
        if isinstance(item, BaseException):
            raise item
        values = item if isinstance(item, dict) else {self.device: item}
        value = values.get(self.device)
        if isinstance(value, (int, float)) and math.isfinite(value) and value >= 0:
            self._last = float(value)
        return dict(values)  # type: ignore[arg-type]

    def hardware(self) -> dict[str, object]:
        return dict(self._hardware)

    def close(self) -> None:
        self.closed = True


class IncrementMeter:
    """Energy that jumps by a scripted amount at every read: read n (from 0) returns the
    sum of the first n increments, so a window's joules are the increment of its last
    read. ``noisy`` increments first (a busy machine), then ``steady_j`` per read."""

    method = "test-scripted"

    def __init__(self, noisy: list[float], steady_j: float = 1.0):
        self.noisy, self.steady_j = list(noisy), steady_j
        self.reads, self.energy_j, self.closed = 0, 0.0, False

    def devices(self) -> list[str]:
        return ["gpu:0"]

    def read(self) -> dict[str, float]:
        if self.reads:
            n = self.reads - 1
            self.energy_j += self.noisy[n] if n < len(self.noisy) else self.steady_j
        self.reads += 1
        return {"gpu:0": self.energy_j}

    def close(self) -> None:
        self.closed = True


class LazyStartMeter:
    """A sampler started by its first read that then integrates everything since its
    creation, as depth's estimate meter does: the first read returns 0 J, every later one
    `held_j` (energy from before the first read) plus `power_w` x time since it."""

    method = "test-lazy"

    def __init__(self, held_j: float, power_w: float,
                 clock: Callable[[], float] = time.monotonic):
        self.held_j, self.power_w, self.clock = held_j, power_w, clock
        self.started: float | None = None
        self.closed = False

    def devices(self) -> list[str]:
        return ["cpu:0"]

    def read(self) -> dict[str, float]:
        if self.started is None:
            self.started = self.clock()
            return {"cpu:0": 0.0}
        return {"cpu:0": self.held_j + self.power_w * (self.clock() - self.started)}

    def close(self) -> None:
        self.closed = True
