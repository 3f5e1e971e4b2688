"""NVIDIA GPUs through NVML: the total-energy counter, and a power-sampling fallback.

`NvmlCounterMeter` reads ``nvmlDeviceGetTotalEnergyConsumption`` (millijoules since the
driver loaded; Volta and newer; NVML refreshes it about every 100 ms). `NvmlPowerMeter`
is for GPUs without that counter: a background thread samples instantaneous power
(``NVML_FI_DEV_POWER_INSTANT`` where the driver has it, else ``nvmlDeviceGetPowerUsage``,
which on many boards is a ~1 s average) and integrates it with the trapezoid rule.

Both cover the *whole* GPU, whoever else runs on it, so only the GPUs this process uses
are metered: explicit CUDA ordinals, else the current torch device when CUDA is
initialized, else every GPU visible through ``CUDA_VISIBLE_DEVICES`` (indices or UUIDs).
The `nvml` argument takes the ``pynvml`` module or a test double of it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from depth.meters.base import (
    BackgroundSampler,
    CounterNotSupported,
    CounterTracker,
    MeterError,
    MeterPermissionError,
    MeterReadError,
    MeterUnavailable,
    PowerIntegrator,
)

_UNSET = object()


@dataclass(frozen=True)
class Gpu:
    """A GPU this process uses: its label (CUDA ordinal), NVML handle and identity."""

    label: str
    handle: Any
    nvml_index: int
    name: str
    uuid: str


class _Nvml:
    """The boundary with NVML: every vendor call goes through `call`, which converts
    ``NVMLError`` into depth's exceptions."""

    def __init__(self, nvml: ModuleType | Any | None):
        if nvml is None:
            try:
                import pynvml as nvml  # nvidia-ml-py
            except ImportError as err:
                raise MeterUnavailable(f"NVML: nvidia-ml-py is not installed ({err})") from None
        self.lib = nvml
        self.call(nvml.nvmlInit)

    def error_text(self, err: BaseException) -> str:
        value = getattr(err, "value", None)
        lib = self.lib
        if value in (getattr(lib, "NVML_ERROR_LIBRARY_NOT_FOUND", 12),
                     getattr(lib, "NVML_ERROR_DRIVER_NOT_LOADED", 9)):
            return f"no NVIDIA driver on this machine ({err})"
        return str(err) or type(err).__name__

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except self.lib.NVMLError as err:
            value = getattr(err, "value", None)
            text = self.error_text(err)
            if value == getattr(self.lib, "NVML_ERROR_NO_PERMISSION", 4):
                raise MeterPermissionError(f"NVML: permission denied ({text})") from None
            if value in (getattr(self.lib, "NVML_ERROR_GPU_IS_LOST", 15),
                         getattr(self.lib, "NVML_ERROR_UNKNOWN", 999)):
                raise MeterError(f"NVML: {text}") from None
            raise MeterUnavailable(f"NVML: {text}") from None

    def is_not_supported(self, fn: Callable[..., Any], *args: Any) -> bool:
        """True when NVML answers NOT_SUPPORTED for this call (other errors propagate)."""
        try:
            fn(*args)
            return False
        except self.lib.NVMLError as err:
            if getattr(err, "value", None) == getattr(self.lib, "NVML_ERROR_NOT_SUPPORTED", 3):
                return True
            raise

    def shutdown(self) -> None:
        try:
            self.lib.nvmlShutdown()
        except Exception:  # already shut down, or the driver went away: nothing to release
            pass


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_visible_devices(value: str | None) -> list[str] | None:
    """Splits ``CUDA_VISIBLE_DEVICES`` like CUDA does; ``None`` when it is unset."""
    if value is None:
        return None
    entries = []
    for entry in value.split(","):
        entry = entry.strip()
        if not entry:
            break  # CUDA stops at the first empty or invalid entry
        if entry.lstrip("-").isdigit() and int(entry) < 0:
            break
        entries.append(entry)
    return entries


def _torch_cuda_uuids() -> list[str] | None:
    """UUIDs of the CUDA devices, in CUDA ordinal order, when torch already initialized CUDA.

    Matching by UUID is exact whatever ``CUDA_DEVICE_ORDER`` is; it is used only when CUDA
    is already initialized so that metering never initializes CUDA itself.
    """
    try:
        import torch
    except ImportError:
        return None
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return None
    try:
        return ["GPU-" + str(torch.cuda.get_device_properties(i).uuid)
                for i in range(torch.cuda.device_count())]
    except Exception:  # older torch without .uuid: fall back to CUDA_VISIBLE_DEVICES
        return None


def _torch_current_device() -> int | None:
    try:
        import torch
    except ImportError:
        return None
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return int(torch.cuda.current_device())
    return None


def resolve_gpus(
    nv: _Nvml,
    gpus: Sequence[int] | None,
    visible_devices: str | None,
    cuda_uuids: Sequence[str] | None = None,
) -> list[Gpu]:
    """Maps CUDA ordinals to NVML devices.

    Args:
        nv: The NVML boundary.
        gpus: CUDA ordinals to meter; ``None`` means the current torch device when CUDA is
            initialized, else every visible GPU.
        visible_devices: The value of ``CUDA_VISIBLE_DEVICES`` (``None`` when unset).
        cuda_uuids: UUIDs per CUDA ordinal, when known (from torch); exact mapping.

    Raises:
        MeterUnavailable: No GPU is visible, an entry names no GPU, or a MIG instance.
    """
    lib = nv.lib
    count = int(nv.call(lib.nvmlDeviceGetCount))
    handles = [nv.call(lib.nvmlDeviceGetHandleByIndex, i) for i in range(count)]
    uuids = [_text(nv.call(lib.nvmlDeviceGetUUID, h)) for h in handles]

    def by_uuid(entry: str) -> int:
        matches = [i for i, u in enumerate(uuids) if u.startswith(entry)]
        if len(matches) != 1:
            raise MeterUnavailable(
                f"NVML: CUDA device {entry!r} matches {len(matches)} GPUs on this machine")
        return matches[0]

    if cuda_uuids is not None:
        ordinal_to_nvml = [by_uuid(u) for u in cuda_uuids]
    else:
        entries = parse_visible_devices(visible_devices)
        if entries is None:
            ordinal_to_nvml = list(range(count))
        else:
            ordinal_to_nvml = []
            for entry in entries:
                if entry.startswith("MIG-"):
                    raise MeterUnavailable(
                        "NVML: MIG instances have no energy counter of their own (the counter "
                        "covers the whole GPU); meter the parent GPU or use an estimate")
                if entry.startswith("GPU-"):
                    ordinal_to_nvml.append(by_uuid(entry))
                elif entry.isdigit() and int(entry) < count:
                    ordinal_to_nvml.append(int(entry))
                else:
                    break  # CUDA ignores the rest after an invalid entry
    if not ordinal_to_nvml:
        raise MeterUnavailable(
            "NVML: this process sees no GPU (CUDA_VISIBLE_DEVICES hides them all)"
            if count else "NVML: the driver reports no GPU")
    if gpus is None:
        current = _torch_current_device()
        gpus = [current] if current is not None else list(range(len(ordinal_to_nvml)))
    selected = []
    for ordinal in gpus:
        if not 0 <= ordinal < len(ordinal_to_nvml):
            raise MeterUnavailable(
                f"NVML: GPU {ordinal} is not visible to this process "
                f"({len(ordinal_to_nvml)} visible: 0..{len(ordinal_to_nvml) - 1})")
        idx = ordinal_to_nvml[ordinal]
        name = _text(nv.call(lib.nvmlDeviceGetName, handles[idx]))
        selected.append(Gpu(f"gpu:{ordinal}", handles[idx], idx, name, uuids[idx]))
    return selected


class _NvmlMeter:
    """What both NVML backends share: initialization, GPU resolution, hardware facts."""

    method = "nvml"

    def __init__(self, gpus: Sequence[int] | None, nvml: ModuleType | Any | None,
                 visible_devices: Any, cuda_uuids: Sequence[str] | None):
        self._nv = _Nvml(nvml)
        if visible_devices is _UNSET:
            visible_devices = os.environ.get("CUDA_VISIBLE_DEVICES")
        if cuda_uuids is None and nvml is None:  # real NVML: map exactly through torch if it can
            cuda_uuids = _torch_cuda_uuids()
        try:
            self.gpus = resolve_gpus(self._nv, gpus, visible_devices, cuda_uuids)
        except MeterError:
            self._nv.shutdown()
            raise

    def devices(self) -> list[str]:
        return [g.label for g in self.gpus]

    def hardware(self) -> dict[str, object]:
        """GPU names and UUIDs and the driver version, for provenance records."""
        try:
            driver = _text(self._nv.call(self._nv.lib.nvmlSystemGetDriverVersion))
        except MeterError:
            driver = "unknown"
        return {"driver": driver,
                "gpus": [{"device": g.label, "name": g.name, "uuid": g.uuid,
                          "nvml_index": g.nvml_index} for g in self.gpus]}

    def close(self) -> None:
        self._nv.shutdown()


class NvmlCounterMeter(_NvmlMeter):
    """Cumulative GPU joules from NVML's total-energy counter (Volta and newer).

    Args:
        gpus: CUDA ordinals to meter (see module docstring for the default).
        nvml: The ``pynvml`` module or a test double; imported when ``None``.
        visible_devices: ``CUDA_VISIBLE_DEVICES`` override; read from the environment by default.
        cuda_uuids: UUIDs per CUDA ordinal for exact mapping (taken from torch when CUDA is
            initialized and `nvml` is not injected).

    Raises:
        MeterUnavailable: No driver, no visible GPU, or a GPU without the counter.
    """

    method = "nvml-counter"

    def __init__(self, gpus: Sequence[int] | None = None, *, nvml: Any = None,
                 visible_devices: Any = _UNSET, cuda_uuids: Sequence[str] | None = None):
        super().__init__(gpus, nvml, visible_devices, cuda_uuids)
        lib = self._nv.lib
        self._trackers: dict[str, CounterTracker] = {}
        try:
            for g in self.gpus:
                if self._nv.is_not_supported(lib.nvmlDeviceGetTotalEnergyConsumption, g.handle):
                    raise CounterNotSupported(
                        f"NVML: {g.label} ({g.name}) has no total-energy counter (needs Volta "
                        "or newer); power sampling (nvml-power) can replace it")
                tracker = CounterTracker(scale_j=1e-3)  # the counter is in millijoules
                tracker.start(float(self._nv.call(lib.nvmlDeviceGetTotalEnergyConsumption,
                                                  g.handle)))
                self._trackers[g.label] = tracker
        except lib.NVMLError as err:
            self.close()
            raise MeterUnavailable(f"NVML: {self._nv.error_text(err)}") from None
        except MeterError:
            self.close()
            raise

    def read(self) -> dict[str, float]:
        """Cumulative joules per GPU.

        Raises:
            MeterReadError: A GPU could not be read; ``partial`` holds the others.
        """
        energy_j: dict[str, float] = {}
        failed: tuple[str, str] | None = None
        read_mj = self._nv.lib.nvmlDeviceGetTotalEnergyConsumption
        for g in self.gpus:
            try:
                raw_mj = self._nv.call(read_mj, g.handle)
            except MeterError as err:
                failed = failed or (g.label, str(err))
                continue
            energy_j[g.label] = self._trackers[g.label].update(float(raw_mj))
        if failed is not None:
            raise MeterReadError(failed[0], failed[1], partial=energy_j)
        return energy_j

    def flags(self) -> list[str]:
        """One line per anomaly that was bridged (counter resets)."""
        return [f"{label}: NVML energy counter went backwards {t.resets} time(s) (driver "
                "reload?); bridged with the count since the reset, a lower bound"
                for label, t in self._trackers.items() if t.resets]


class NvmlPowerMeter(_NvmlMeter):
    """GPU joules integrated from sampled power, for GPUs without the energy counter.

    Args:
        gpus: CUDA ordinals to meter.
        nvml: The ``pynvml`` module or a test double.
        visible_devices: ``CUDA_VISIBLE_DEVICES`` override.
        cuda_uuids: UUIDs per CUDA ordinal for exact mapping.
        period_s: Sampling period; at most 0.1 s (>= 10 Hz).

    The sampler thread starts on the first ``read()``; a probe sample taken here anchors
    the integral at creation. ``read()`` only copies the integral (one lock).
    """

    method = "nvml-power"

    def __init__(self, gpus: Sequence[int] | None = None, *, nvml: Any = None,
                 visible_devices: Any = _UNSET, cuda_uuids: Sequence[str] | None = None,
                 period_s: float = 0.05):
        if not 0 < period_s <= 0.1:
            raise ValueError(f"period_s must be in (0, 0.1] (>= 10 Hz sampling), got {period_s}")
        super().__init__(gpus, nvml, visible_devices, cuda_uuids)
        self.period_s = period_s
        self._readers: dict[str, Callable[[], float]] = {}
        self.sources: dict[str, str] = {}
        try:
            for g in self.gpus:
                self._readers[g.label], self.sources[g.label] = self._power_reader(g)
            self._integrator = PowerIntegrator(self.devices())
            self._failed: dict[str, str] = {}
            self._integrator.add(time.monotonic(), self._sample_w())
        except MeterError:
            self.close()
            raise
        self._sampler = BackgroundSampler(self._sample, period_s, "depth-nvml-power")

    def _power_reader(self, g: Gpu) -> tuple[Callable[[], float], str]:
        lib, nv = self._nv.lib, self._nv
        field_id = getattr(lib, "NVML_FI_DEV_POWER_INSTANT", None)
        if field_id is not None and hasattr(lib, "nvmlDeviceGetFieldValues"):

            def instant_w() -> float:
                value = nv.call(lib.nvmlDeviceGetFieldValues, g.handle, [field_id])[0]
                if value.nvmlReturn != getattr(lib, "NVML_SUCCESS", 0):
                    raise lib.NVMLError(value.nvmlReturn)
                return float(value.value.uiVal) / 1000.0  # mW

            try:
                instant_w()
                return instant_w, "POWER_INSTANT field"
            except (MeterError, lib.NVMLError):
                pass

        def usage_w() -> float:
            return float(nv.call(lib.nvmlDeviceGetPowerUsage, g.handle)) / 1000.0  # mW

        try:
            usage_w()
        except lib.NVMLError as err:
            raise MeterUnavailable(
                f"NVML: {g.label} reports no power ({nv.error_text(err)})") from None
        return usage_w, "nvmlDeviceGetPowerUsage"

    def _sample_w(self) -> dict[str, float]:
        power_w = {}
        for label, reader in self._readers.items():
            if label in self._failed:
                continue
            try:
                power_w[label] = reader()
            except (MeterError, self._nv.lib.NVMLError) as err:
                self._failed[label] = str(err)
        return power_w

    def _sample(self) -> None:
        self._integrator.add(time.monotonic(), self._sample_w())

    def read(self) -> dict[str, float]:
        """Cumulative joules per GPU up to the last sample (at most one period old).

        Raises:
            MeterReadError: A GPU stopped answering; ``partial`` holds the others.
        """
        self._sampler.ensure_started()
        energy_j = self._integrator.energy_j()
        if self._sampler.error is not None:
            raise MeterReadError(",".join(self.devices()), f"power sampler stopped: "
                                 f"{self._sampler.error}")
        if self._failed:
            label, reason = next(iter(self._failed.items()))
            partial = {d: e for d, e in energy_j.items() if d not in self._failed}
            raise MeterReadError(label, reason, partial=partial)
        return energy_j

    def close(self) -> None:
        sampler = getattr(self, "_sampler", None)
        if sampler is not None:
            sampler.stop()
        super().close()

