"""The CodeCarbon-based estimate meter, for real on this machine."""

from __future__ import annotations

import time

import pytest

from depth.meters.estimate import EstimateMeter, ProcessCpuLoad, cpu_power_w
from tests.support.blocking import read_returns_while_sampler_is_stuck, stuck_sampler


def test_cpu_power_is_tdp_times_this_processs_share():
    assert cpu_power_w(100.0, 0.0) == 0.0  # no idle floor: idle power is not this process's
    assert cpu_power_w(100.0, 1.0) == pytest.approx(100.0)
    assert cpu_power_w(100.0, 0.25) == pytest.approx(25.0)
    assert cpu_power_w(100.0, -0.1) == 0.0


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
            c0 = time.process_time()
            while time.process_time() - c0 < 0.05:  # work: this process's CPU time
                pass
            time.sleep(0.05)
        for a, b in zip(readings, readings[1:]):
            assert all(b[d] >= a[d] for d in a)
        assert readings[-1]["cpu:0"] > 0  # the sampler integrated this process's work
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


def test_process_cpu_share_counts_this_processs_work():
    import psutil

    load = ProcessCpuLoad()
    t0, c0 = time.monotonic(), time.process_time()
    while time.process_time() - c0 < 0.2:  # busy in this thread
        pass
    share = load()
    wall_s, cpu_s = time.monotonic() - t0, time.process_time() - c0
    assert share == pytest.approx(cpu_s / (wall_s * psutil.cpu_count()), rel=0.2)


def test_process_cpu_share_of_another_process_sees_its_work_not_ours():
    """`depth eval --endpoint` bills a server's process: its work counts, ours does not."""
    import subprocess
    import sys

    import psutil

    # Started through a shell that exits at once: not our child, as a server is not.
    pid = int(subprocess.run(["sh", "-c", f"'{sys.executable}' -c 'while True: pass' "
                              ">/dev/null 2>&1 & echo $!"], capture_output=True, text=True,
                             check=True).stdout)
    busy = psutil.Process(pid)
    try:
        theirs, ours = ProcessCpuLoad(pid=pid), ProcessCpuLoad()
        time.sleep(1.0)  # we sleep; it spins (on a shared machine, part of a core at least)
        their_share, our_share = theirs(), ours()
        assert their_share > 0.2 / psutil.cpu_count() > our_share
    finally:
        busy.kill()  # the process we started, by its id
