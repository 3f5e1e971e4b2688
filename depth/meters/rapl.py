"""CPU package and DRAM energy from Linux powercap (Intel RAPL; AMD since Linux 5.8).

Each zone ``/sys/class/powercap/intel-rapl:N[:M]`` has ``name``, ``energy_uj`` (a counter in
microjoules that wraps at ``max_energy_range_uj``) and sub-zones. Packages (``package-N``)
become ``cpu:N``; their ``dram`` sub-zones (or top-level ``dram`` zones on some servers)
become ``dram:N``. ``core``/``uncore`` are parts of the package and ``psys`` overlaps
everything, so they are not added. Since Linux 5.10 ``energy_uj`` is readable only by root.

What it cannot see: GPUs, disks, fans, PSU losses; on a shared host, other tenants' load.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from depth.meters.base import CounterTracker, MeterPermissionError, MeterReadError, MeterUnavailable

POWERCAP_ROOT = Path("/sys/class/powercap")


@dataclass
class RaplZone:
    """One counted zone: its device label and counter files."""

    label: str
    name: str
    energy_path: Path
    max_range_uj: float


def _read_text(path: Path) -> str:
    return path.read_text().strip()


def find_zones(root: Path = POWERCAP_ROOT, include_dram: bool = True) -> list[RaplZone]:
    """Lists the package (and DRAM) zones under a powercap root.

    Raises:
        MeterUnavailable: No powercap tree or no RAPL zone.
        MeterPermissionError: The counters exist but this user cannot read them.
    """
    if not root.is_dir():
        raise MeterUnavailable(f"RAPL: {root} does not exist (no Linux powercap interface here)")
    named = []  # (zone dir, id parts, zone name), read once
    for zone_dir in sorted(root.glob("intel-rapl:*")):
        try:
            named.append((zone_dir, zone_dir.name.split(":"), _read_text(zone_dir / "name")))
        except OSError:
            continue
    package_of = {parts[1]: name.removeprefix("package-") for _, parts, name in named
                  if len(parts) == 2 and name.startswith("package-")}  # zone id -> package
    zones: list[RaplZone] = []
    for zone_dir, parts, name in named:
        package = package_of.get(parts[1], parts[1])
        if len(parts) == 2 and name.startswith("package-"):
            label = f"cpu:{package}"
        elif name == "dram" and include_dram:
            label = f"dram:{package}"
        else:
            continue
        try:
            max_range = float(_read_text(zone_dir / "max_energy_range_uj"))
        except OSError:
            max_range = float(2**32)  # the common hardware register width, when not exposed
        zones.append(RaplZone(label, name, zone_dir / "energy_uj", max_range))
    if not zones:
        raise MeterUnavailable(f"RAPL: no package zone under {root}")
    # Stable order whatever the directory listing: packages first, then DRAM, by package.
    zones.sort(key=lambda z: (z.label.startswith("dram"), z.label.split(":")[1].zfill(4)))
    for zone in zones:
        try:
            _read_text(zone.energy_path)
        except PermissionError:
            raise MeterPermissionError(
                f"RAPL: {zone.energy_path} is readable only by root; grant read access with "
                f"`sudo chmod a+r {root}/intel-rapl:*/energy_uj {root}/intel-rapl:*:*/energy_uj` "
                "(or a udev rule) or run as root") from None
        except OSError as err:
            raise MeterUnavailable(
                f"RAPL: cannot read {zone.energy_path} ({err.strerror})") from None
    return zones


class RaplMeter:
    """Cumulative CPU package and DRAM joules from powercap counters.

    Args:
        root: The powercap directory (a fake tree in tests).
        include_dram: Whether DRAM zones are metered when present.

    Raises:
        MeterUnavailable: No RAPL zone here. MeterPermissionError: counters not readable.
    """

    method = "rapl"

    def __init__(self, root: Path | str = POWERCAP_ROOT, include_dram: bool = True):
        self.root = Path(root)
        self.zones = find_zones(self.root, include_dram)
        # Descriptors stay open: a pread at offset 0 makes sysfs render the attribute
        # afresh, at a fraction of the cost of open+read+close per zone and read.
        self._fds = {z.label: os.open(z.energy_path, os.O_RDONLY) for z in self.zones}
        self._trackers = {}
        for zone in self.zones:
            tracker = CounterTracker(scale_j=1e-6, max_range=zone.max_range_uj)
            tracker.start(self._raw_uj(zone.label))
            self._trackers[zone.label] = tracker

    def _raw_uj(self, label: str) -> float:
        return float(os.pread(self._fds[label], 32, 0))

    def devices(self) -> list[str]:
        return [z.label for z in self.zones]

    def read(self) -> dict[str, float]:
        """Cumulative joules per zone since creation.

        Raises:
            MeterReadError: A counter file stopped being readable; ``partial`` holds the rest.
        """
        energy_j: dict[str, float] = {}
        failed: tuple[str, str] | None = None
        for zone in self.zones:
            try:
                raw_uj = self._raw_uj(zone.label)
            except (OSError, ValueError) as err:
                failed = failed or (zone.label, f"RAPL: cannot read {zone.energy_path} ({err})")
                continue
            energy_j[zone.label] = self._trackers[zone.label].update(raw_uj)
        if failed is not None:
            raise MeterReadError(failed[0], failed[1], partial=energy_j)
        return energy_j

    def hardware(self) -> dict[str, object]:
        return {"rapl_zones": [{"device": z.label, "zone": z.energy_path.parent.name,
                                "name": z.name} for z in self.zones]}

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}
