"""A fake Linux powercap tree, laid out like /sys/class/powercap, for the RAPL backend."""

from __future__ import annotations

from pathlib import Path


class FakePowercap:
    """Builds zones under `root` and sets their counters.

    Zones are named as the kernel names them: ``intel-rapl:N`` for package N and
    ``intel-rapl:N:M`` for its sub-zones (``core``, ``uncore``, ``dram``).
    """

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def zone(self, zone_id: str, name: str, energy_uj: int = 0,
             max_range_uj: int = 262_143_328_850) -> Path:
        d = self.root / f"intel-rapl:{zone_id}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "name").write_text(name + "\n")
        (d / "energy_uj").write_text(f"{energy_uj}\n")
        (d / "max_energy_range_uj").write_text(f"{max_range_uj}\n")
        return d

    def set(self, zone_id: str, energy_uj: int) -> None:
        (self.root / f"intel-rapl:{zone_id}" / "energy_uj").write_text(f"{energy_uj}\n")

    @classmethod
    def server(cls, root: Path) -> "FakePowercap":
        """Two packages, each with core and dram sub-zones, plus a psys zone."""
        tree = cls(root)
        for pkg in (0, 1):
            tree.zone(f"{pkg}", f"package-{pkg}", 1_000_000)
            tree.zone(f"{pkg}:0", "core", 500_000)
            tree.zone(f"{pkg}:1", "dram", 200_000)
        tree.zone("2", "psys", 9_000_000)
        return tree
