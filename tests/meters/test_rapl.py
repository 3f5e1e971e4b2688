"""RAPL backend on a fake powercap tree."""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from depth.meters import MeterPermissionError, MeterReadError, MeterUnavailable
from depth.meters.base import CounterTracker
from depth.meters.rapl import RaplMeter, find_zones
from tests.doubles.powercap import FakePowercap


def test_packages_and_dram_are_metered_core_and_psys_are_not(tmp_path):
    FakePowercap.server(tmp_path)
    meter = RaplMeter(tmp_path)
    assert sorted(meter.devices()) == ["cpu:0", "cpu:1", "dram:0", "dram:1"]
    assert RaplMeter(tmp_path, include_dram=False).devices() == ["cpu:0", "cpu:1"]


def test_reads_are_joules_since_creation(tmp_path):
    tree = FakePowercap.server(tmp_path)
    meter = RaplMeter(tmp_path)
    tree.set("0", 1_000_000 + 12_500_000)  # +12.5 J
    tree.set("1:1", 200_000 + 3_000_000)  # +3 J
    assert meter.read() == pytest.approx({"cpu:0": 12.5, "cpu:1": 0.0, "dram:0": 0.0,
                                          "dram:1": 3.0})


def test_wraparound_uses_max_energy_range(tmp_path):
    tree = FakePowercap(tmp_path)
    tree.zone("0", "package-0", energy_uj=999_000_000, max_range_uj=1_000_000_000)
    meter = RaplMeter(tmp_path)
    tree.set("0", 999_900_000)  # +0.9 J
    assert meter.read()["cpu:0"] == pytest.approx(0.9)
    tree.set("0", 400_000)  # wrapped: 0.1 J to the top, then 0.4 J
    assert meter.read()["cpu:0"] == pytest.approx(1.4)
    tree.set("0", 1_400_000)
    assert meter.read()["cpu:0"] == pytest.approx(2.4)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10**6 - 1),
       st.lists(st.integers(0, 10**6 - 1), min_size=1, max_size=50))
def test_counter_tracker_sums_increments_across_any_number_of_wraps(start, increments):
    max_range = 10**6
    tracker = CounterTracker(scale_j=1e-6, max_range=max_range)
    tracker.start(start)
    raw = start
    for inc in increments:  # each increment smaller than the range: one wrap at most
        raw = (raw + inc) % max_range
        tracker.update(raw)
    assert tracker.energy_j == pytest.approx(sum(increments) * 1e-6)
    assert tracker.energy_j >= 0


def test_missing_tree_is_unavailable(tmp_path):
    with pytest.raises(MeterUnavailable, match="does not exist"):
        RaplMeter(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MeterUnavailable, match="no package zone"):
        RaplMeter(tmp_path / "empty")


def test_unreadable_counter_mid_run_is_a_read_error_with_partial(tmp_path):
    FakePowercap.server(tmp_path)
    meter = RaplMeter(tmp_path)
    (tmp_path / "intel-rapl:1" / "energy_uj").write_text("")  # as a zone going away reads
    with pytest.raises(MeterReadError) as info:
        meter.read()
    assert info.value.device == "cpu:1"
    assert set(info.value.partial) == {"cpu:0", "dram:0", "dram:1"}


def _find_zones_as_nobody(root: Path) -> object:
    """Runs find_zones with the permissions of an unprivileged user.

    root reads any file whatever its mode, so when the tests run as root a forked child
    drops to `nobody` first; the result (or exception) comes back through a pipe.
    """
    if os.geteuid() != 0:
        try:
            return find_zones(root)
        except Exception as err:  # noqa: BLE001 - returned for the assertion
            return err
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_fd)
        try:
            os.setgid(65534)
            os.setuid(65534)
            try:
                result: object = find_zones(root)
            except Exception as err:  # noqa: BLE001
                result = err
            os.write(write_fd, pickle.dumps(result))
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return pickle.loads(data)


def test_root_only_counters_give_a_one_line_how_to_grant_access():
    base = Path(tempfile.mkdtemp(prefix="depth-powercap-"))
    try:
        base.chmod(0o755)
        tree = FakePowercap.server(base / "powercap")
        for path in tree.root.rglob("energy_uj"):
            path.chmod(0o000)  # as on Linux >= 5.10 (there 0400 root; nobody is denied)
        result = _find_zones_as_nobody(tree.root)
        assert isinstance(result, MeterPermissionError), result
        message = str(result)
        assert "\n" not in message
        assert "readable only by root" in message and "chmod a+r" in message
    finally:
        for path in base.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        import shutil

        shutil.rmtree(base)
