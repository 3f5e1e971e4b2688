"""The GPU suite's analysis (`depth.accounting.measurement`) on synthetic readings, and the suite
script itself run on the CPU against a pynvml test double whose counter advances with time
(100 ms updates, as NVML's does)."""

from __future__ import annotations

import importlib.util
import json
import math
import time
from pathlib import Path

import pytest

from depth.accounting import measurement
from tests.doubles.pynvml_double import FakeGpu, FakeNvml

SUITE = Path(__file__).resolve().parents[2] / "scripts" / "gpu_suite.py"


def test_percentiles_latency_and_update_period():
    assert measurement.percentile([1, 2, 3, 4, 5], 50) == 3
    assert measurement.percentile([0, 10], 90) == 9
    stats = measurement.latency_stats([1e-6] * 99 + [1e-3])
    assert stats["median_us"] == pytest.approx(1.0) and stats["max_us"] == pytest.approx(1000)
    # a counter polled every 1 ms that changes every 100 ms
    samples = [(i * 0.001, float((i // 100) * 5)) for i in range(1000)]
    period = measurement.update_period(samples)
    assert period["changes"] == 9 and period["median_s"] == pytest.approx(0.1)


def test_integration_and_disagreement():
    samples = [(t / 100, 200.0) for t in range(101)]  # 200 W for 1 s
    assert measurement.integrate_power(samples) == pytest.approx(200.0)
    ramp = [(0.0, 0.0), (1.0, 100.0)]
    assert measurement.integrate_power(ramp) == pytest.approx(50.0)
    assert measurement.disagreement_pct(200.0, 190.0) == pytest.approx(-5.0)


def test_attribution_by_the_ledger_on_recorded_reads():
    # 100 W, a counter updating every 100 ms, steps of 30 ms read exactly at their ends
    def counter(t):
        return math.floor(t / 0.1) * 0.1 * 100.0

    reads = [(0.0, 0.0, None)] + [(s * 0.03, counter(s * 0.03), s) for s in range(1, 31)]
    reads.append((1.0, 100.0, None))
    joules = measurement.step_joules(reads)
    assert len(joules) == 30
    assert abs(sum(joules) - 90.0) <= 100.0 * 0.1  # within one counter update of the truth
    assert all(j > 0 for j in joules)  # no zero-then-spike steps
    assert measurement.percentile([abs(j - 3.0) / 3.0 for j in joules[2:-2]], 50) < 0.2
    err = measurement.attribution_error([3.0] * 10, [3.3] * 5 + [2.7] * 5)
    assert err["median_abs_pct"] == pytest.approx(10.0)
    assert err["closure_pct"] == pytest.approx(0.0, abs=1e-9)
    ratio = measurement.overhead_ratio([1.01, 1.02, 1.03], [1.0, 1.0, 1.0])
    assert ratio["ratio"] == pytest.approx(1.02)


class ClockedGpu(FakeGpu):
    """A fake GPU drawing `watts`, whose energy counter (mJ) refreshes every 100 ms."""

    watts = 150.0
    t0 = time.monotonic()

    @property
    def energy_mj(self):  # type: ignore[override]
        t = time.monotonic() - self.t0
        return math.floor(t / 0.1) * 0.1 * self.watts * 1000.0

    @energy_mj.setter
    def energy_mj(self, value):
        pass

    @property
    def power_mw(self):  # type: ignore[override]
        return self.watts * 1000.0

    @power_mw.setter
    def power_mw(self, value):
        pass


def test_the_suite_runs_end_to_end_against_the_pynvml_double(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_suite", SUITE)
    suite = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(suite)
    nvml = FakeNvml([ClockedGpu()])
    results = suite.run_suite(nvml, device="cpu", model="tiny", quick=True, out_dir=tmp_path,
                              command="pytest")
    assert results["device"] == "NVIDIA H100 80GB HBM3"
    assert results["idle"]["power_w"] == pytest.approx(150.0, rel=0.2)
    assert results["counter"]["update_period"]["median_s"] == pytest.approx(0.1, rel=0.3)
    for load in ("steady", "bursty"):  # counter and integration agree on a flat 150 W
        assert abs(results[load]["disagreement_pct"]) < 15
    attribution = results["attribution"]
    assert 0 < attribution["steps_j"] < attribution["total_j"]
    assert attribution["steps_j"] + attribution["tail_j"] == pytest.approx(attribution["total_j"])
    assert set(attribution["none"]) >= {"median_abs_pct", "p90_abs_pct", "closure_pct"}
    assert results["overhead"]["runs"] == 2 and results["overhead"]["ratio"] > 0
    inference = results["inference"]
    assert inference["hardware"] == "H100" and 0 < inference["ceiling_fraction"]
    assert results["suite"]["joules"] > 0
    written = json.loads(Path(results["written"][0]).read_text())
    assert written["steady"]["counter_j"] == results["steady"]["counter_j"]
    assert "GPU measurement suite" in Path(results["written"][1]).read_text()


def test_uncertainty_is_weighted_by_each_sources_joules():
    from depth.record.uncertainty import of_method, uncertainty

    mixed = uncertainty({"nvml-counter": 900.0, "estimate": 100.0})
    assert mixed["relative"] == pytest.approx((900 * 0.10 + 100 * 0.50) / 1000)
    assert mixed["joules"] == pytest.approx(mixed["relative"] * 1000)
    assert "assumed" in mixed["basis"]
    assert uncertainty({"someone-elses-meter": 5.0}) is None  # no bound we could claim
    assert of_method("nvml-counter+rapl")["relative"] == pytest.approx(0.10)
