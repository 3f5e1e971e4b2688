"""Framework-free energy accounting: cumulative joules, step points, segments, waste.

The ledger is fed *observations* (a monotonic time and cumulative joules per device) at
optimizer-step boundaries, and returns *points* (one per logged step) whose joules add up
exactly to the cumulative total (closure). How a boundary is placed between counter
updates is `depth.accounting.attribution`.

Segments. Every fit is a segment. The model's depth is the sum of all segments, including
*wasted* ones: energy spent after the checkpoint a run resumes from (recomputed steps,
crashed runs), recovered from the crash sidecar.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from depth.accounting.attribution import CounterInterpolator

SCHEMA = 1
NO_HISTORY_FLAG = "no energy history"  # a fit that starts past step 0 with nothing before it


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Segment:
    """One fit (``kind="fit"``), or energy lost after a checkpoint (``kind="wasted"``).

    ``method`` names every source of the segment (``a+b``); ``methods`` says which one
    measured each device (empty in segments written before it was kept, and for wasted
    work), so that a history metered differently in each fit keeps each part's method.
    """

    kind: str
    start_step: int
    end_step: int
    joules: float
    wall_s: float
    started: str
    ended: str | None
    method: str
    hardware: dict[str, Any] = field(default_factory=dict)
    devices: dict[str, float] = field(default_factory=dict)
    tokens: int = 0
    sync: str = "none"
    flags: list[str] = field(default_factory=list)
    methods: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Segment":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(slots=True)
class Point:
    """One logged optimizer step.

    Attributes:
        step: The optimizer step (Lightning's ``global_step`` after the step).
        joules: Cumulative joules of the model's whole history at this step.
        interval_joules: Joules since the previous point (its step's, when logging every step).
        interval_steps: Optimizer steps since the previous point.
        interval_s: Seconds since the previous point.
        tokens: Training tokens since the previous point (``None`` when unknown).
        devices: Cumulative joules per device (whole history).
    """

    step: int
    joules: float
    interval_joules: float
    interval_steps: int
    interval_s: float
    tokens: int | None
    devices: dict[str, float]

    @property
    def step_joules(self) -> float:
        return self.interval_joules / max(self.interval_steps, 1)

    @property
    def watts(self) -> float:
        return self.interval_joules / self.interval_s if self.interval_s > 0 else 0.0

    @property
    def joules_per_token(self) -> float | None:
        return self.interval_joules / self.tokens if self.tokens else None


class Ledger:
    """The energy history of one model: closed segments plus the open one.

    Usage: `begin` at the start of a fit, `step` (or `queue`, recorded later) at each
    optimizer-step boundary (with observations from every rank), `pop_points` to log,
    `state_dict` at checkpoints, `end` when the fit stops. `state_dict`/`load_state_dict`
    carry it through checkpoints.
    """

    def __init__(self, max_lag_s: float = 1.0):
        self.lineage_id = uuid.uuid4().hex
        self.segments: list[Segment] = []
        self.history_devices: dict[str, float] = {}  # joules per device, closed segments
        self.optimizer_steps = 0
        self.tokens = 0
        self.tokens_known = True
        self.max_lag_s = max_lag_s
        self._open: dict[str, Any] | None = None
        self._ready: list[Point] = []
        self._queued: list[tuple[int, Sequence[tuple[float, Mapping[str, float]]], int | None,
                                 bool]] = []

    # ----------------------------------------------------------------- totals

    @property
    def history_j(self) -> float:
        return math.fsum(self.history_devices.values())

    @property
    def wasted_j(self) -> float:
        return math.fsum(s.joules for s in self.segments if s.kind == "wasted")

    # ----------------------------------------------------------------- a fit

    def begin(self, step: int, observations: Sequence[tuple[float, Mapping[str, float]]],
              method: str, hardware: Mapping[str, Any] | None = None, sync: str = "none",
              started: str | None = None,
              methods: Mapping[str, str] | Callable[[], Mapping[str, str]] | None = None
              ) -> None:
        """Opens a segment at optimizer step `step` from baseline readings.

        Args:
            step: The optimizer step the fit starts from (0, or the resumed step).
            observations: (monotonic time, cumulative joules per device), one per rank.
            method: How the joules are obtained.
            hardware: Hardware facts for the record.
            sync: The CUDA synchronization mode.
            started: ISO time the fit started (now by default).
            methods: The method of each device, or a callable giving it, asked whenever
                the segment is saved or closed (a device found unmeasured by then says so).
        """
        if self._open is not None:
            raise RuntimeError("a segment is already open; call end() first")
        start: dict[str, float] = {}
        interps: dict[str, CounterInterpolator] = {}
        t_first = observations[0][0]
        for t_s, reading in observations:
            for device, energy_j in reading.items():
                start[device] = energy_j
                interps[device] = CounterInterpolator(t_s, energy_j, self.max_lag_s)
                self.history_devices.setdefault(device, 0.0)
        self._open = {
            "history_j": self.history_j,  # constant while the segment is open
            "start_step": step, "start": start, "interps": interps, "t0": t_first,
            "wall0": time.time(), "started": started or utc_now(), "method": method,
            "hardware": dict(hardware or {}), "sync": sync, "tokens": 0,
            "last_point": (step, t_first, self.history_j),
            "boundaries": {}, "done": {}, "flags": [], "last_step": step,
            "last_reading": dict(start), "methods": methods,
        }
        self.optimizer_steps = step
        if step > 0 and not self.segments:  # resumed from a checkpoint with no depth history
            self.add_flag(f"{NO_HISTORY_FLAG} before step {step}: resumed from a checkpoint "
                          "without a depth history; the energy of those steps is not counted")

    def step(self, step: int, observations: Sequence[tuple[float, Mapping[str, float]]],
             tokens: int | None, log: bool = True) -> None:
        """Records an optimizer-step boundary.

        Args:
            step: The optimizer step just completed.
            observations: (monotonic time, cumulative joules per device), one per rank; the
                first one's time is used for intervals.
            tokens: Training tokens processed since the previous call (all ranks), or None.
            log: Whether this boundary becomes a point (else it only refines attribution).
        """
        if self._queued:  # boundaries queued earlier come first
            self._catch_up()
        self._record(self._require_open(), step, observations, tokens, log)
        self._emit_ready()

    def _record(self, seg: dict[str, Any], step: int,
                observations: Sequence[tuple[float, Mapping[str, float]]],
                tokens: int | None, log: bool) -> None:
        """`step` without making points (those are made once for a batch of steps)."""
        self.optimizer_steps = step
        seg["last_step"] = step
        if tokens is None:
            self.tokens_known = False
        else:
            self.tokens += tokens
            seg["tokens"] += tokens
            seg["pending_tokens"] = seg.get("pending_tokens", 0) + tokens
        key = step if log else None
        done, interps, last_reading = seg["done"], seg["interps"], seg["last_reading"]
        if log:
            seg["boundaries"][step] = (observations[0][0], seg.pop("pending_tokens", 0))
            done[step] = {}
        for t_s, reading in observations:
            for device, energy_j in reading.items():
                interp = interps.get(device)
                if interp is None:
                    continue
                last_reading[device] = energy_j
                for k, value in interp.observe(t_s, energy_j, key).items():
                    done[k][device] = value

    def queue(self, step: int, observations: Sequence[tuple[float, Mapping[str, float]]],
              tokens: int | None, log: bool = True) -> None:
        """`step`, later: the boundary is kept as given and recorded, in order, before the
        ledger next answers (`pop_points`, `state_dict`, `end`). A training loop's hook then
        costs an append; the attribution is the same as with `step` at once."""
        self._queued.append((step, observations, tokens, log))

    def _catch_up(self) -> None:
        queued, self._queued = self._queued, []
        if queued:
            seg = self._require_open()
            for step, observations, tokens, log in queued:
                self._record(seg, step, observations, tokens, log)
            self._emit_ready()

    def _emit_ready(self, force: bool = False) -> None:
        seg = self._require_open()
        n_devices = len(seg["interps"])
        done, start, history = seg["done"], seg["start"], self.history_devices
        for step in list(done):  # logged steps, inserted in increasing order
            values = done[step]
            if len(values) < n_devices and not force:
                break
            t_s, tokens = seg["boundaries"].pop(step)
            del done[step]
            prev_step, prev_t, prev_j = seg["last_point"]
            joules = seg["history_j"] + math.fsum(values[d] - start[d] for d in values)
            devices = {d: history[d] + values[d] - start[d] for d in values}
            self._ready.append(Point(step, joules, joules - prev_j, step - prev_step,
                                     t_s - prev_t, tokens if self.tokens_known else None,
                                     devices))
            seg["last_point"] = (step, t_s, joules)

    def pop_points(self) -> list[Point]:
        """Points that became final since the last call, in step order."""
        if self._queued:
            self._catch_up()
        points, self._ready = self._ready, []
        return points

    def add_flag(self, message: str) -> None:
        if self._open is not None and message not in self._open["flags"]:
            self._open["flags"].append(message)

    def snapshot_devices(self, reading: Mapping[str, float]) -> dict[str, float]:
        """Whole-history joules per device, with the open segment up to `reading`."""
        seg = self._open
        if seg is None:
            return dict(self.history_devices)
        out = dict(self.history_devices)
        for device, energy_j in reading.items():
            if device in seg["start"]:
                out[device] = self.history_devices[device] + energy_j - seg["start"][device]
        return out

    def settle(self, observations: Sequence[tuple[float, Mapping[str, float]]]) -> None:
        """Makes every boundary final at this read, taken as exact (a checkpoint: its record
        and its step's point are then one number; the last step's boundary moves to it)."""
        self._catch_up()
        seg = self._require_open()
        last = seg["last_step"]
        if last in seg["boundaries"]:  # its point is not out yet
            _, tokens = seg["boundaries"][last]
            seg["boundaries"][last] = (observations[0][0], tokens)
        for t_s, reading in observations:
            for device, energy_j in reading.items():
                interp = seg["interps"].get(device)
                if interp is None:
                    continue
                seg["last_reading"][device] = energy_j
                for k, value in interp.settle(t_s, energy_j, last).items():
                    seg["done"][k][device] = value
        self._emit_ready()

    def end(self, observations: Sequence[tuple[float, Mapping[str, float]]],
            flags: Sequence[str] = ()) -> Segment:
        """Closes the open segment: pending boundaries become final, totals are exact."""
        self._catch_up()
        seg = self._require_open()
        final: dict[str, float] = dict(seg["last_reading"])
        for t_s, reading in observations:
            for device, energy_j in reading.items():
                interp = seg["interps"].get(device)
                if interp is None:
                    continue
                final[device] = energy_j
                for k, value in interp.close(t_s, energy_j).items():
                    seg["done"][k][device] = value
        self._emit_ready(force=True)
        devices = {d: final[d] - seg["start"][d] for d in seg["start"]}
        segment = self._open_segment(devices, ended=utc_now(), flags=flags)
        for device, joules in devices.items():
            self.history_devices[device] = self.history_devices.get(device, 0.0) + joules
        self.segments.append(segment)
        self._open = None
        return segment

    def _open_segment(self, devices: Mapping[str, float], ended: str | None,
                      flags: Sequence[str] = ()) -> Segment:
        """The open fit as a `Segment`, with its joules per device so far."""
        seg = self._require_open()
        methods = seg["methods"]
        methods = dict((methods() if callable(methods) else methods) or {})
        methods = {d: methods[d] for d in devices if d in methods}
        names = set(methods.values())
        if not names or len(methods) < len(devices):  # some devices have no method of their own
            names.update(seg["method"].split("+"))
        method = "+".join(sorted(names))
        return Segment(
            kind="fit", start_step=seg["start_step"], end_step=seg["last_step"],
            joules=math.fsum(devices.values()), wall_s=time.time() - seg["wall0"],
            started=seg["started"], ended=ended, method=method,
            hardware=seg["hardware"], devices=dict(devices), tokens=seg["tokens"],
            sync=seg["sync"], flags=list(dict.fromkeys([*seg["flags"], *flags])),
            methods=methods)

    def add_wasted(self, start_step: int, end_step: int, devices: Mapping[str, float],
                   wall_s: float, started: str, ended: str | None, method: str,
                   note: str) -> Segment:
        """Adds energy spent after a checkpoint that this history does not continue."""
        if self._open is not None:
            raise RuntimeError("add wasted work before begin()")
        devices = {d: max(0.0, j) for d, j in devices.items()}
        segment = Segment(kind="wasted", start_step=start_step, end_step=end_step,
                          joules=math.fsum(devices.values()), wall_s=wall_s, started=started,
                          ended=ended, method=method, devices=devices, flags=[note])
        for device, joules in devices.items():
            self.history_devices[device] = self.history_devices.get(device, 0.0) + joules
        self.segments.append(segment)
        return segment

    def _require_open(self) -> dict[str, Any]:
        if self._open is None:
            raise RuntimeError("no open segment; call begin() first")
        return self._open

    @property
    def is_open(self) -> bool:
        return self._open is not None

    # ----------------------------------------------------------------- persistence

    def state_dict(self, observations: Sequence[tuple[float, Mapping[str, float]]] | None = None
                   ) -> dict[str, Any]:
        """The history as of now, the open segment included up to `observations` (a read of
        every rank, taken now), at which the open segment is settled (`settle`).

        The open segment appears as a segment with ``ended=None``; a resume turns it into
        the record's last fit segment, so the checkpoint's `train_joules` covers everything
        spent up to the save.
        """
        self._catch_up()
        segments = [s.to_dict() for s in self.segments]
        devices = dict(self.history_devices)
        seg = self._open
        if seg is not None and observations:
            self.settle(observations)
            devices = self.snapshot_devices(
                {d: v for _, reading in observations for d, v in reading.items()})
            seg_devices = {d: devices[d] - self.history_devices[d] for d in seg["start"]}
            segments.append(self._open_segment(seg_devices, ended=None).to_dict())
        return {
            "schema": SCHEMA, "lineage_id": self.lineage_id, "segments": segments,
            "devices": devices, "optimizer_steps": self.optimizer_steps,
            "tokens": self.tokens if self.tokens_known else None,
            "train_joules": math.fsum(devices.values()),
            "wasted_joules": math.fsum(s["joules"] for s in segments if s["kind"] == "wasted"),
            "saved_at": utc_now(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continues the history saved in a checkpoint (its open segment is closed here)."""
        if self._open is not None:
            raise RuntimeError("cannot load a ledger state while a segment is open")
        self.lineage_id = state["lineage_id"]
        self.segments = [Segment.from_dict(s) for s in state["segments"]]
        for s in self.segments:
            if s.ended is None:
                s.ended = state.get("saved_at")
        self.history_devices = dict(state["devices"])
        self.optimizer_steps = int(state["optimizer_steps"])
        self.tokens_known = state.get("tokens") is not None
        self.tokens = int(state.get("tokens") or 0)
