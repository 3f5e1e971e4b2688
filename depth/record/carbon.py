"""Carbon: kg CO2eq for the joules, through CodeCarbon's offline grid intensities.

An estimate by nature (a yearly average energy mix, not the grid at the hour of the run),
and labelled so. Without a configured country, CodeCarbon's world average is used and the
label says that too.

CodeCarbon's tables are fixed per CodeCarbon version, and importing it to read them costs
a fresh process ~1 s at the start of every fit; the figures looked up are therefore kept
in ``$XDG_CACHE_HOME/depth/grid-intensity.json`` (``~/.cache`` by default), keyed by that
version, country and region. ``DEPTH_CACHE_DIR`` moves the cache; a cache that cannot be
read or written is simply not used.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

WORLD = "WORLD"
CACHE_ENV = "DEPTH_CACHE_DIR"


def cache_file() -> Path:
    """Where looked-up grid intensities are kept between processes."""
    root = os.environ.get(CACHE_ENV) or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "depth"
    return Path(root) / "grid-intensity.json"


def _codecarbon_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("codecarbon")
    except PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=32)  # a process's fits ask for the same place: one lookup
def grid_intensity(country_iso_code: str | None = None,
                   region: str | None = None) -> dict[str, Any]:
    """g CO2eq per kWh of a country (ISO 3166 alpha-3) or a region CodeCarbon knows (e.g.
    ``USA``/``california``); CodeCarbon's world average when neither is known. Looked up
    once per CodeCarbon version and place (~1 s; then from the cache file): `carbon_for`
    then only multiplies. The result is shared: do not change it."""
    version = _codecarbon_version()
    key = f"{version}|{(country_iso_code or WORLD).upper()}|{(region or '').lower()}"
    path = cache_file()
    try:
        cached = json.loads(path.read_text()) if version else {}
    except (OSError, ValueError):
        cached = {}
    found = cached.get(key) if isinstance(cached, dict) else None
    if not _plausible(found):
        found = _look_up(country_iso_code, region)
        _keep(path, cached, key, found, version)
    if "no data for" in found["basis"]:
        import warnings

        warnings.warn(f"depth: CodeCarbon has no grid data for country_iso_code "
                      f"{country_iso_code!r}; the carbon estimate uses the world average "
                      "(the record says so)", stacklevel=3)
    return found


def _plausible(entry: Any) -> bool:
    """A cache entry as `_look_up` makes them (anything else is looked up again)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("basis"), str):
        return False
    g = entry.get("g_co2eq_per_kwh")
    return isinstance(g, (int, float)) and 0 <= g < 10_000 and entry.get("label") == "estimate"


def _keep(path: Path, cached: Any, key: str, found: dict[str, Any], version: str | None) -> None:
    if version and found["label"] == "estimate":
        try:  # written whole, then renamed: a concurrent reader never sees half a file
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({**(cached if isinstance(cached, dict) else {}),
                                       key: found}, indent=1))
            os.replace(tmp, path)
        except OSError:
            pass


def _look_up(country_iso_code: str | None, region: str | None) -> dict[str, Any]:
    """`grid_intensity` from CodeCarbon's tables."""
    try:
        from codecarbon.core.emissions import Emissions
        from codecarbon.core.units import Energy
        from codecarbon.external.geography import GeoMetadata
        from codecarbon.input import DataSource
    except ImportError as err:
        return {"g_co2eq_per_kwh": None, "basis": f"codecarbon not installed ({err})",
                "country_iso_code": None, "region": None, "label": "unavailable"}
    data = DataSource()
    iso = (country_iso_code or WORLD).upper()
    one_kwh = Energy.from_energy(kWh=1.0)
    known = iso in data.get_global_energy_mix_data()
    if region and known:
        kg_per_kwh = Emissions(data).get_region_emissions(one_kwh, GeoMetadata(iso, region=region))
        basis = f"CodeCarbon offline grid intensity for {iso}/{region.lower()}"
    elif known:
        kg_per_kwh = Emissions(data).get_country_emissions(one_kwh, GeoMetadata(iso))
        basis = f"CodeCarbon offline energy mix of {iso}"
    else:
        kg_per_kwh = data.get_carbon_intensity_per_source_data()["world_average"] / 1000.0
        basis = ("CodeCarbon world-average grid intensity (no country configured)"
                 if iso == WORLD else
                 f"CodeCarbon world-average grid intensity (no data for {iso})")
    return {"g_co2eq_per_kwh": kg_per_kwh * 1000.0, "basis": basis,
            "country_iso_code": iso if known else None, "region": region if known else None,
            "label": "estimate"}


def carbon_for(joules: float, intensity: dict[str, Any]) -> dict[str, Any]:
    """The carbon entry of a record: kg CO2eq for `joules` at a looked-up intensity."""
    g_per_kwh = intensity.get("g_co2eq_per_kwh")
    kg = None if g_per_kwh is None else g_per_kwh * joules / 3.6e6 / 1000.0
    return {"kg_co2eq": kg, **intensity}
