"""A test double of the ``pynvml`` module: just the NVML calls depth uses.

Each `FakeGpu` is a handle; tests change its fields to simulate load, an old GPU without
the energy counter, a lost GPU or a driver reload (counter reset). It is passed to the
meters by injection (``nvml=FakeNvml([...])``), never patched into depth's internals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

NVML_SUCCESS = 0
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_UNKNOWN = 999
NVML_FI_DEV_POWER_INSTANT = 186

_TEXT = {
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
    NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    NVML_ERROR_GPU_IS_LOST: "GPU is lost",
    NVML_ERROR_UNKNOWN: "Unknown Error",
}


class NVMLError(Exception):
    """Like pynvml's: carries the NVML return code in ``value``."""

    def __init__(self, value: int):
        super().__init__(_TEXT.get(value, f"NVML error {value}"))
        self.value = value


@dataclass
class FakeGpu:
    """One simulated GPU.

    Attributes:
        energy_mj: The total-energy counter; ``None`` means the GPU has none (pre-Volta).
        power_mw: What power queries answer.
        power_limit_mw: The enforced power limit; ``None``: NVML cannot say.
        instant_field: Whether the POWER_INSTANT field is supported.
        lost: Every query fails with GPU_IS_LOST once set.
    """

    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = "GPU-00000000-0000-0000-0000-000000000000"
    energy_mj: float | None = 0.0
    power_mw: float = 100_000.0
    power_limit_mw: float | None = 700_000.0
    instant_field: bool = True
    lost: bool = False
    calls: dict[str, int] = field(default_factory=dict)

    def count(self, fn: str) -> None:
        self.calls[fn] = self.calls.get(fn, 0) + 1
        if self.lost:
            raise NVMLError(NVML_ERROR_GPU_IS_LOST)


class FakeNvml:
    """An object shaped like the ``pynvml`` module, over a list of `FakeGpu`."""

    NVMLError = NVMLError
    NVML_SUCCESS = NVML_SUCCESS
    NVML_ERROR_NOT_SUPPORTED = NVML_ERROR_NOT_SUPPORTED
    NVML_ERROR_NO_PERMISSION = NVML_ERROR_NO_PERMISSION
    NVML_ERROR_DRIVER_NOT_LOADED = NVML_ERROR_DRIVER_NOT_LOADED
    NVML_ERROR_LIBRARY_NOT_FOUND = NVML_ERROR_LIBRARY_NOT_FOUND
    NVML_ERROR_GPU_IS_LOST = NVML_ERROR_GPU_IS_LOST
    NVML_ERROR_UNKNOWN = NVML_ERROR_UNKNOWN
    NVML_FI_DEV_POWER_INSTANT = NVML_FI_DEV_POWER_INSTANT

    def __init__(self, gpus: list[FakeGpu] | None = None, *, driver: bool = True,
                 driver_version: str = "570.86.15"):
        self.gpus = gpus if gpus is not None else [FakeGpu()]
        self.driver = driver
        self.driver_version = driver_version
        self.initialized = 0

    def nvmlInit(self) -> None:
        if not self.driver:
            raise NVMLError(NVML_ERROR_LIBRARY_NOT_FOUND)
        self.initialized += 1

    def nvmlShutdown(self) -> None:
        self.initialized -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return self.driver_version

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        return self.gpus[index]

    def nvmlDeviceGetUUID(self, handle: FakeGpu) -> str:
        handle.count("uuid")
        return handle.uuid

    def nvmlDeviceGetName(self, handle: FakeGpu) -> str:
        handle.count("name")
        return handle.name

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: FakeGpu) -> int:
        handle.count("energy")
        if handle.energy_mj is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return int(handle.energy_mj)

    def nvmlDeviceGetPowerUsage(self, handle: FakeGpu) -> int:
        handle.count("power_usage")
        return int(handle.power_mw)

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: FakeGpu) -> int:
        handle.count("power_limit")
        if handle.power_limit_mw is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return int(handle.power_limit_mw)

    def nvmlDeviceGetFieldValues(self, handle: FakeGpu, field_ids: list[int]) -> list:
        handle.count("field_values")
        out = []
        for field_id in field_ids:
            ok = field_id == NVML_FI_DEV_POWER_INSTANT and handle.instant_field
            out.append(SimpleNamespace(
                fieldId=field_id,
                nvmlReturn=NVML_SUCCESS if ok else NVML_ERROR_NOT_SUPPORTED,
                value=SimpleNamespace(uiVal=int(handle.power_mw) if ok else 0)))
        return out


def gpus(n: int, **kwargs: object) -> list[FakeGpu]:
    """`n` GPUs with distinct UUIDs ``GPU-aaaa...``, ``GPU-bbbb...``."""
    return [FakeGpu(uuid=f"GPU-{chr(97 + i) * 8}-1111-2222-3333-444444444444", **kwargs)
            for i in range(n)]
