"""NVIDIA GPUs through NVML: the total-energy counter, and a power-sampling fallback.

`NvmlCounterMeter` reads ``nvmlDeviceGetTotalEnergyConsumption`` (millijoules since the
driver loaded; Volta and newer; NVML refreshes it about every 100 ms). `NvmlPowerMeter`
is for GPUs without that counter: a background thread samples instantaneous power
(``NVML_FI_DEV_POWER_INSTANT`` where the driver has it, else ``nvmlDeviceGetPowerUsage``,
which on many boards is a ~1 s average) and integrates it with the trapezoid rule.

Both cover the *whole* GPU, so only the GPUs this process uses are metered
(`depth.meters.nvml_gpus`). The `nvml` argument takes the ``pynvml`` module or a test
double of it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from depth.meters.base import (
    BackgroundSampler,
    CounterNotSupported,
    CounterTracker,
    MeterError,
    MeterReadError,
    MeterUnavailable,
    PowerIntegrator,
)
from depth.meters.nvml_gpus import (
    UNSET,
    Gpu,
    NvmlSession,
    nvml_text,
    parse_visible_devices,
    resolve_gpus,
    torch_cuda_uuids,
)

__all__ = ["NvmlCounterMeter", "NvmlPowerMeter", "parse_visible_devices"]


class _NvmlMeter:
    """What both NVML backends share: initialization, GPU resolution, hardware facts."""

    method = "nvml"

    def __init__(self, gpus: Sequence[int] | None, nvml: ModuleType | Any | None,
                 visible_devices: Any, cuda_uuids: Sequence[str] | None):
        self._nv = NvmlSession(nvml)
        if visible_devices is UNSET:
            visible_devices = os.environ.get("CUDA_VISIBLE_DEVICES")
        if cuda_uuids is None and nvml is None:  # real NVML: map exactly through torch if it can
            cuda_uuids = torch_cuda_uuids()
        try:
            self.gpus = resolve_gpus(self._nv, gpus, visible_devices, cuda_uuids)
        except MeterError:
            self._nv.shutdown()
            raise

    def devices(self) -> list[str]:
        return [g.label for g in self.gpus]

    def hardware(self) -> dict[str, object]:
        """GPU names, UUIDs and power limits and the driver version, for provenance records."""
        try:
            driver = nvml_text(self._nv.call(self._nv.lib.nvmlSystemGetDriverVersion))
        except MeterError:
            driver = "unknown"
        gpus = []
        for g in self.gpus:
            info: dict[str, object] = {"device": g.label, "name": g.name, "uuid": g.uuid,
                                       "nvml_index": g.nvml_index}
            limit_w = self._power_limit_w(g)
            if limit_w:
                info["power_limit_w"] = limit_w
            gpus.append(info)
        return {"driver": driver, "gpus": gpus}

    def _power_limit_w(self, g: Gpu) -> float | None:
        """The GPU's enforced power limit, which bounds plausible readings (``None``
        when NVML cannot say)."""
        get_limit = getattr(self._nv.lib, "nvmlDeviceGetEnforcedPowerLimit", None)
        if get_limit is None:
            return None
        try:
            return float(self._nv.call(get_limit, g.handle)) / 1000.0  # milliwatts
        except (MeterError, TypeError, ValueError):
            return None

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
                 visible_devices: Any = UNSET, cuda_uuids: Sequence[str] | None = None):
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
                 visible_devices: Any = UNSET, cuda_uuids: Sequence[str] | None = None,
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

