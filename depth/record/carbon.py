"""Carbon: kg CO2eq for the joules, through CodeCarbon's offline grid intensities.

An estimate by nature (a yearly average energy mix, not the grid at the hour of the run),
and labelled so. Without a configured country, CodeCarbon's world average is used and the
label says that too.
"""

from __future__ import annotations

import functools
from typing import Any

WORLD = "WORLD"


@functools.lru_cache(maxsize=32)  # a process's fits ask for the same place: one lookup
def grid_intensity(country_iso_code: str | None = None,
                   region: str | None = None) -> dict[str, Any]:
    """g CO2eq per kWh of a country (ISO 3166 alpha-3) or a region CodeCarbon knows (e.g.
    ``USA``/``california``); CodeCarbon's world average when neither is known. Looked up
    once per process and place (~0.5 s): `carbon_for` then only multiplies. The result is
    shared: do not change it."""
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
        if iso != WORLD:
            import warnings

            warnings.warn(f"depth: CodeCarbon has no grid data for country_iso_code {iso!r}; "
                          "the carbon estimate uses the world average (the record says so)",
                          stacklevel=2)
    return {"g_co2eq_per_kwh": kg_per_kwh * 1000.0, "basis": basis,
            "country_iso_code": iso if known else None, "region": region if known else None,
            "label": "estimate"}


def carbon_for(joules: float, intensity: dict[str, Any]) -> dict[str, Any]:
    """The carbon entry of a record: kg CO2eq for `joules` at a looked-up intensity."""
    g_per_kwh = intensity.get("g_co2eq_per_kwh")
    kg = None if g_per_kwh is None else g_per_kwh * joules / 3.6e6 / 1000.0
    return {"kg_co2eq": kg, **intensity}
