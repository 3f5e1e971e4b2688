"""A busy machine: the estimate meter bills this process's CPU time, not its neighbours'.

Real processes, real psutil, the real `EstimateMeter` sampler; only the TDP is given, so
that the expected joules can be computed by hand.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from depth.meters.estimate import EstimateMeter

BURN = ("import time\n"
        "t0 = time.monotonic()\n"
        "while time.process_time() < {cpu_s} and time.monotonic() - t0 < {wall_s}:\n"
        "    pass\n")


def _neighbour(cpu_s: float, wall_s: float) -> int:
    """Starts a CPU-burning process that is NOT a child of this one (the shell that starts
    it exits at once, so it is re-parented); returns its pid."""
    code = BURN.format(cpu_s=cpu_s, wall_s=wall_s)
    out = subprocess.run(["sh", "-c", f'"{sys.executable}" -c "$0" >/dev/null 2>&1 & echo $!',
                          code], capture_output=True, text=True, check=True)
    pid = int(out.stdout.strip())
    assert pid not in {c.pid for c in psutil.Process().children(recursive=True)}
    return pid


def test_a_neighbours_cpu_work_is_not_billed_to_this_process():
    meter = EstimateMeter(tdp_w=100.0, include_dram=False, period_s=0.05)
    pid = _neighbour(cpu_s=1.0, wall_s=3.0)
    try:
        before = meter.read()["cpu:0"]
        neighbour = psutil.Process(pid)
        time.sleep(1.0)  # this process idles while the neighbour burns a core
        neighbour_cpu_s = sum(neighbour.cpu_times()[:2])
        time.sleep(0.1)
        billed_j = meter.read()["cpu:0"] - before
    finally:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        meter.close()
    assert neighbour_cpu_s > 0.3, "the neighbour never ran: the test shows nothing"
    # machine-wide load would bill >= 100 W x (0.1 + 0.9 x share^3) x 1 s, i.e. >= 10 J;
    # this process did next to nothing (its sampler thread only)
    assert billed_j < 0.05 * 100.0 * 1.1
    assert meter.basis["attribution"] == "process"
    assert "process CPU time" in meter.basis["cpu_model_formula"]


def test_a_childs_cpu_work_is_billed_as_its_share_of_the_machine():
    meter = EstimateMeter(tdp_w=100.0, include_dram=False, period_s=0.05)
    cpus = psutil.cpu_count()
    try:
        before = meter.read()["cpu:0"]
        t0 = os.times()
        subprocess.run([sys.executable, "-c", BURN.format(cpu_s=0.6, wall_s=10.0)], check=True)
        t1 = os.times()
        time.sleep(0.2)  # one more sample after the child was reaped
        billed_j = meter.read()["cpu:0"] - before
    finally:
        meter.close()
    child_cpu_s = (t1.children_user - t0.children_user) + (t1.children_system
                                                            - t0.children_system)
    expected_j = 100.0 * child_cpu_s / cpus  # TDP x CPU seconds / logical CPUs
    assert child_cpu_s >= 0.5
    assert billed_j == pytest.approx(expected_j, rel=0.35, abs=0.5 * 100 / cpus * 0.2)
