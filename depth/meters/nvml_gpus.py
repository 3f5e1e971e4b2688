"""Which NVIDIA GPUs this process uses, and the NVML boundary every vendor call crosses.

NVML counters cover the *whole* GPU, whoever else runs on it, so only the GPUs this
process uses are metered: explicit CUDA ordinals, else the current torch device when CUDA
is initialized, else every GPU visible through ``CUDA_VISIBLE_DEVICES`` (indices or
UUIDs). NVML's errors become depth's (`depth.meters.base`) here. The `nvml` argument takes
the ``pynvml`` module or a test double of it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from depth.meters.base import (
    MeterError,
    MeterPermissionError,
    MeterUnavailable,
)

UNSET = object()


@dataclass(frozen=True)
class Gpu:
    """A GPU this process uses: its label (CUDA ordinal), NVML handle and identity."""

    label: str
    handle: Any
    nvml_index: int
    name: str
    uuid: str


class NvmlSession:
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


def nvml_text(value: Any) -> str:
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


def torch_cuda_uuids() -> list[str] | None:
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


def torch_current_device() -> int | None:
    try:
        import torch
    except ImportError:
        return None
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return int(torch.cuda.current_device())
    return None


def resolve_gpus(
    nv: NvmlSession,
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
    uuids = [nvml_text(nv.call(lib.nvmlDeviceGetUUID, h)) for h in handles]

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
        current = torch_current_device()
        gpus = [current] if current is not None else list(range(len(ordinal_to_nvml)))
    selected = []
    for ordinal in gpus:
        if not 0 <= ordinal < len(ordinal_to_nvml):
            raise MeterUnavailable(
                f"NVML: GPU {ordinal} is not visible to this process "
                f"({len(ordinal_to_nvml)} visible: 0..{len(ordinal_to_nvml) - 1})")
        idx = ordinal_to_nvml[ordinal]
        name = nvml_text(nv.call(lib.nvmlDeviceGetName, handles[idx]))
        selected.append(Gpu(f"gpu:{ordinal}", handles[idx], idx, name, uuids[idx]))
    return selected
