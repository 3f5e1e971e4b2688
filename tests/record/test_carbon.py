"""Grid intensities: looked up from CodeCarbon once per version and place, then read from
depth's cache, so a fresh process does not import CodeCarbon at every fit's start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import json, sys
from depth.record.carbon import grid_intensity
found = grid_intensity({code!r}, {region!r})
print(json.dumps({{"found": found, "codecarbon": "codecarbon" in sys.modules}}))
"""


def probe(cache: Path, code: str | None = "FRA", region: str | None = None) -> dict:
    env = {**os.environ, "DEPTH_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", PROBE.format(code=code, region=region)],
                         env=env, capture_output=True, text=True, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_second_process_reads_the_cache_instead_of_importing_codecarbon(tmp_path):
    first = probe(tmp_path)
    assert first["codecarbon"] and first["found"]["country_iso_code"] == "FRA"
    assert (tmp_path / "grid-intensity.json").is_file()
    second = probe(tmp_path)
    assert not second["codecarbon"]
    assert second["found"] == first["found"]


def test_a_damaged_or_implausible_cache_is_looked_up_again(tmp_path):
    good = probe(tmp_path)["found"]
    cache = tmp_path / "grid-intensity.json"
    entries = json.loads(cache.read_text())
    key = next(iter(entries))
    cache.write_text(json.dumps({key: {**good, "g_co2eq_per_kwh": -5}}))
    again = probe(tmp_path)
    assert again["codecarbon"] and again["found"] == good
    cache.write_text("{not json")
    assert probe(tmp_path)["found"] == good


def test_an_unknown_country_warns_every_time_even_from_the_cache(tmp_path, monkeypatch):
    from depth.record import carbon

    monkeypatch.setenv("DEPTH_CACHE_DIR", str(tmp_path))
    for _ in range(2):
        carbon.grid_intensity.cache_clear()
        with pytest.warns(UserWarning, match="no grid data for country_iso_code 'ZZZ'"):
            found = carbon.grid_intensity("ZZZ")
        assert "world-average" in found["basis"] and found["country_iso_code"] is None
