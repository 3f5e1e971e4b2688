"""The CodeCarbon-based estimate meter, for real on this machine."""

from __future__ import annotations

import time

import pytest

from depth.meters.estimate import CpuLoad, EstimateMeter, cpu_power_w
from tests.support.blocking import read_returns_while_sampler_is_stuck, stuck_sampler


def test_cpu_power_follows_codecarbon_machine_curve():
    assert cpu_power_w(100.0, 0.0) == pytest.approx(10.0)  # idle floor: 10 % of TDP
    assert cpu_power_w(100.0, 1.0) == pytest.approx(100.0)
    assert cpu_power_w(100.0, 0.5) == pytest.approx(100.0 * (0.1 + 0.9 * 0.125))
    assert cpu_power_w(100.0, 1.7) == pytest.approx(100.0)  # clamped


def test_real_estimate_on_this_machine_is_labelled_and_monotonic():
    meter = EstimateMeter("no sensor in this test")
    try:
        assert meter.method == "estimate"
        assert meter.devices() == ["cpu:0", "dram:0"]
        assert meter.tdp_w > 0 and meter.ram_power_w > 0
        assert meter.basis["cpu_model"] and "CodeCarbon" in meter.basis["tdp_source"]
        readings = []
        for _ in range(6):
            readings.append(meter.read())
            time.sleep(0.1)
        for a, b in zip(readings, readings[1:]):
            assert all(b[d] >= a[d] for d in a)
        assert readings[-1]["cpu:0"] > 0  # the sampler integrated something
    finally:
        meter.close()


def test_integrates_injected_load_exactly():
    meter = EstimateMeter(tdp_w=100.0, ram_power_w=10.0, period_s=0.02, cpu_load=lambda: 1.0)
    t0 = time.monotonic()
    meter.read()
    time.sleep(0.5)
    energy = meter.read()
    elapsed = time.monotonic() - t0
    meter.close()
    # full load: 100 W from creation to the last sample (at most one period behind)
    assert 100 * (elapsed - 0.1) <= energy["cpu:0"] <= 100 * (elapsed + 0.05)
    assert 10 * elapsed <= energy["dram:0"] <= 10 * (elapsed + 0.05)


def test_read_does_not_wait_for_the_load_measurement():
    block, inside, release = stuck_sampler()

    def slow_load() -> float:
        block()
        return 0.5

    meter = EstimateMeter(tdp_w=50.0, ram_power_w=5.0, cpu_load=slow_load)
    assert read_returns_while_sampler_is_stuck(meter.read, inside), "read() blocked"
    release.set()
    meter.close()


def test_cpu_load_is_a_fraction():
    load = CpuLoad()
    sum(i * i for i in range(200_000))
    value = load()
    assert 0.0 <= value <= 1.0
