"""Uncertainty attached to every energy figure, from the method that produced it.

The relative bounds below are *assumed*, per method, from what is known about each
source (docs/method.md gives the reasons); none has yet been measured by depth on real
hardware. `scripts/gpu_suite.py` measures how the NVML counter agrees with independent
power integration; when a dated measurement exists, the bound here should follow it.
A figure from several sources (several meters, or a history metered differently in each
fit) gets the joule-weighted mean of their bounds: the worst case, where every source errs
the same way. A figure with an ``unmeasured`` part has no bound: that part is missing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

RELATIVE_BOUNDS: dict[str, tuple[float, str]] = {
    "nvml-counter": (0.10, "assumed: steady loads agree within a few percent; on A100/H100 "
                           "the sensor samples ~25% of the time, so bursty loads can err more "
                           "(Yang et al., SC24)"),
    "nvml-power": (0.15, "assumed: 20 Hz sampling misses faster changes; PowerUsage is a ~1 s "
                         "average on many boards"),
    "rapl": (0.10, "assumed: package and DRAM counters only; no PSU, fans, disks, network"),
    "estimate": (0.50, "assumed: a model (TDP x this process's CPU-time share, RAM by size), "
                       "not a measurement"),
}
UNMEASURED = "unmeasured"  # as depth.accounting.reader.UNMEASURED: no valid reading at all
NOT_MEASURED = ("estimate", UNMEASURED)
BASIS = ("assumed per-method bounds (depth.record.uncertainty.RELATIVE_BOUNDS), weighted by each "
         "source's joules; not yet measured on this hardware")


def is_measured(method: str) -> bool:
    """Whether a (possibly combined, ``a+b``) method measured every part: no ``estimate``
    and no ``unmeasured`` part."""
    return not any(part in NOT_MEASURED for part in method.split("+"))


def measurement_label(method: str, measured: bool | None = None) -> str:
    """``measured``, ``ESTIMATED: no sensor``, ``PARTLY ESTIMATED: ...`` or ``UNMEASURED:
    no valid reading``, for displays of a (possibly combined) method; `measured` is the
    record's own verdict, false when a measured meter's faults were bridged."""
    if UNMEASURED in method.split("+"):
        return "UNMEASURED: no valid reading" + ("" if method == UNMEASURED else " from some")
    if not is_measured(method):
        return "ESTIMATED: no sensor"
    if measured is False:
        return "PARTLY ESTIMATED: meter faults bridged at the last power (see flags)"
    return "measured"


def relative_bound(method: str) -> float | None:
    """The relative bound of one method (``None`` for a third party's own meter)."""
    bound = RELATIVE_BOUNDS.get(method)
    return bound[0] if bound else None


def uncertainty(joules_by_method: Mapping[str, float]) -> dict[str, Any] | None:
    """``{relative, joules, basis, per_method}`` for a figure made of `joules_by_method`,
    or ``None`` when a method has no known bound (or there are no joules)."""
    total = sum(joules_by_method.values())
    bounds = {m: relative_bound(m) for m in joules_by_method}
    if total <= 0 or any(b is None for b in bounds.values()):
        return None
    relative = sum(joules_by_method[m] * bounds[m] for m in bounds) / total  # type: ignore
    return {"relative": relative, "joules": relative * total, "basis": BASIS,
            "per_method": {m: {"relative": bounds[m], "why": RELATIVE_BOUNDS[m][1]}
                           for m in bounds}}


def of_method(method: str, joules: float = 1.0) -> dict[str, Any] | None:
    """The uncertainty of a figure from one (possibly combined ``a+b``) method, sources
    weighted equally when their shares are unknown."""
    parts = method.split("+")
    return uncertainty({m: joules / len(parts) for m in parts})
