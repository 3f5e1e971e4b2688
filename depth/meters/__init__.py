"""Energy meters: one backend per file behind the `EnergyMeter` protocol.

`auto_meter()` picks, per device class, the best source this machine offers:

- GPUs: NVML total-energy counter, else NVML power sampling, else none;
- CPU and DRAM: RAPL, else a labelled CodeCarbon-based estimate.

and combines them into one meter that remembers what it chose and rejected, and why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from depth.meters.base import (
    CounterNotSupported,
    EnergyMeter,
    MeterError,
    MeterPermissionError,
    MeterReadError,
    MeterUnavailable,
    Source,
)
from depth.meters.rapl import POWERCAP_ROOT

__all__ = [
    "CombinedMeter",
    "CounterNotSupported",
    "EnergyMeter",
    "MeterError",
    "MeterPermissionError",
    "MeterReadError",
    "MeterUnavailable",
    "Source",
    "auto_meter",
    "make_meter",
    "METER_NAMES",
]

METER_NAMES = ("auto", "nvml-counter", "nvml-power", "rapl", "estimate")
GPU_CHOICES = ("auto", "counter", "power", "off")
CPU_CHOICES = ("auto", "rapl", "estimate", "off")


class CombinedMeter:
    """Several meters read as one; device labels must be distinct.

    Attributes:
        meters: The combined backends.
        sources: Every source considered, chosen or rejected, with its reason.
        method: The backends' methods joined with ``+`` (one name when there is one).
    """

    def __init__(self, meters: Sequence[EnergyMeter], sources: Sequence[Source] = ()):
        if not meters:
            raise MeterUnavailable("no energy source could be used")
        self.meters = list(meters)
        self.sources = list(sources)
        self._device_method: dict[str, str] = {}
        for meter in self.meters:
            for device in meter.devices():
                if device in self._device_method:
                    raise ValueError(f"device {device!r} is reported by two meters")
                self._device_method[device] = meter.method
        self.method = "+".join(dict.fromkeys(m.method for m in self.meters))

    def devices(self) -> list[str]:
        return list(self._device_method)

    def methods(self) -> dict[str, str]:
        """The method behind each device's joules."""
        return dict(self._device_method)

    def read(self) -> dict[str, float]:
        """Cumulative joules of every device.

        Raises:
            MeterReadError: Some device failed; ``partial`` holds every other device.
        """
        energy_j: dict[str, float] = {}
        failure: MeterReadError | None = None
        for meter in self.meters:
            try:
                energy_j.update(meter.read())
            except MeterReadError as err:
                energy_j.update(err.partial)
                failure = failure or err
        if failure is not None:
            raise MeterReadError(failure.device, failure.reason, partial=energy_j)
        return energy_j

    def flags(self) -> list[str]:
        """Anomalies the backends bridged (e.g. counter resets), one line each."""
        return [line for m in self.meters for line in getattr(m, "flags", list)()]

    def hardware(self) -> dict[str, Any]:
        info: dict[str, Any] = {}
        for meter in self.meters:
            info.update(getattr(meter, "hardware", dict)())
        return info

    @property
    def rejected(self) -> list[Source]:
        return [s for s in self.sources if not s.chosen]

    def close(self) -> None:
        for meter in self.meters:
            meter.close()


def _gpu_meter(gpus: Sequence[int] | None, gpu: str, nvml_kwargs: Mapping[str, Any],
               sources: list[Source]) -> EnergyMeter | None:
    from depth.meters.nvml import NvmlCounterMeter, NvmlPowerMeter

    if gpu == "off":
        sources.append(Source("nvml-counter", False, "GPU metering turned off (gpu='off')"))
        return None
    if gpu in ("auto", "counter"):
        try:
            meter = NvmlCounterMeter(gpus, **nvml_kwargs)
        except CounterNotSupported as err:
            sources.append(Source("nvml-counter", False, str(err)))
            if gpu == "counter":
                return None
        except MeterUnavailable as err:
            sources.append(Source("nvml-counter", False, str(err)))
            return None  # no driver or no GPU: power sampling cannot do better
        else:
            sources.append(Source("nvml-counter", True, "NVML total-energy counter (mJ, "
                                  "whole GPU, refreshed ~every 100 ms)", meter.devices()))
            return meter
    try:
        meter = NvmlPowerMeter(gpus, **nvml_kwargs)
    except MeterUnavailable as err:
        sources.append(Source("nvml-power", False, str(err)))
        return None
    kinds = ", ".join(sorted(set(meter.sources.values())))
    sources.append(Source("nvml-power", True, f"NVML power sampled at "
                          f"{1 / meter.period_s:.0f} Hz ({kinds}), trapezoid-integrated",
                          meter.devices()))
    return meter


def _cpu_meter(cpu: str, powercap_root: Path, sources: list[Source],
               estimate_kwargs: Mapping[str, Any]) -> EnergyMeter | None:
    from depth.meters.estimate import EstimateMeter
    from depth.meters.rapl import RaplMeter

    if cpu == "off":
        sources.append(Source("rapl", False, "CPU metering turned off (cpu='off')"))
        return None
    if cpu in ("auto", "rapl"):
        try:
            meter = RaplMeter(powercap_root)
        except MeterUnavailable as err:
            sources.append(Source("rapl", False, str(err)))
            if cpu == "rapl":
                return None
        else:
            sources.append(Source("rapl", True, f"Linux powercap counters under {powercap_root}",
                                  meter.devices()))
            return meter
    rejected = "; ".join(s.reason for s in sources if not s.chosen and s.method == "rapl")
    reason = f"no CPU energy counter ({rejected})" if rejected else "estimate requested"
    try:
        meter = EstimateMeter(reason, **estimate_kwargs)
    except MeterUnavailable as err:
        sources.append(Source("estimate", False, str(err)))
        return None
    sources.append(Source("estimate", True, f"{reason}; CodeCarbon model, this process's "
                          f"CPU time x TDP share: {meter.basis['cpu_model']}, "
                          f"TDP {meter.tdp_w:g} W ({meter.basis['tdp_source']}), "
                          f"RAM {meter.ram_power_w:g} W",
                          meter.devices()))
    return meter


def auto_meter(
    gpus: Sequence[int] | None = None,
    *,
    gpu: str = "auto",
    cpu: str = "auto",
    nvml: Any = None,
    powercap_root: Path | str = POWERCAP_ROOT,
    visible_devices: str | None | object = None,
    estimate_kwargs: Mapping[str, Any] | None = None,
) -> CombinedMeter:
    """The best energy sources this machine offers, combined into one meter.

    Args:
        gpus: CUDA ordinals this process uses (default: current device, else all visible).
        gpu: ``"auto"`` (counter, else power sampling), ``"counter"``, ``"power"``, ``"off"``.
        cpu: ``"auto"`` (RAPL, else estimate), ``"rapl"``, ``"estimate"``, ``"off"``.
        nvml: A ``pynvml`` module or test double (imported when ``None``).
        powercap_root: Where RAPL zones live (a fake tree in tests).
        visible_devices: ``CUDA_VISIBLE_DEVICES`` override (default: the environment).
        estimate_kwargs: Passed to `EstimateMeter` (e.g. ``tdp_w``).

    Raises:
        ValueError: An unknown `gpu` or `cpu` choice.
        MeterUnavailable: Nothing at all could be used; the message lists why.
    """
    if gpu not in GPU_CHOICES:
        raise ValueError(f"gpu must be one of {', '.join(GPU_CHOICES)}; got {gpu!r}")
    if cpu not in CPU_CHOICES:
        raise ValueError(f"cpu must be one of {', '.join(CPU_CHOICES)}; got {cpu!r}")
    nvml_kwargs: dict[str, Any] = {"nvml": nvml}
    if visible_devices is not None:
        nvml_kwargs["visible_devices"] = visible_devices
    sources: list[Source] = []
    meters = [m for m in (_gpu_meter(gpus, gpu, nvml_kwargs, sources),
                          _cpu_meter(cpu, Path(powercap_root), sources, estimate_kwargs or {}))
              if m is not None]
    if not meters:
        raise MeterUnavailable("no energy source: " + "; ".join(s.reason for s in sources))
    return CombinedMeter(meters, sources)


def make_meter(spec: EnergyMeter | str = "auto", **kwargs: Any) -> EnergyMeter:
    """A meter from a name in `METER_NAMES`, or `spec` itself when it is already a meter.

    Raises:
        ValueError: An unknown name (the message lists the valid ones).
    """
    if not isinstance(spec, str):
        return spec
    if spec == "auto":
        return auto_meter(**kwargs)
    if spec == "nvml-counter":
        from depth.meters.nvml import NvmlCounterMeter

        return NvmlCounterMeter(**kwargs)
    if spec == "nvml-power":
        from depth.meters.nvml import NvmlPowerMeter

        return NvmlPowerMeter(**kwargs)
    if spec == "rapl":
        from depth.meters.rapl import RaplMeter

        return RaplMeter(**kwargs)
    if spec == "estimate":
        from depth.meters.estimate import EstimateMeter

        return EstimateMeter(**kwargs)
    raise ValueError(f"meter must be one of {', '.join(METER_NAMES)} or an EnergyMeter; "
                     f"got {spec!r}")
