"""The framework-free ledger: closure, attribution, bridging, segments, persistence."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from depth.accounting.attribution import CounterInterpolator
from depth.accounting.ledger import Ledger
from depth.accounting.reader import BridgingReader
from depth.meters import MeterReadError


def staircase(power_w: float, update_s: float):
    """A counter that refreshes every `update_s` (like NVML) under constant power."""
    return lambda t: power_w * math.floor(t / update_s) * update_s


def run_ledger(durations, update_s, power_w=100.0, t0=0.0):
    counter = staircase(power_w, update_s)
    ledger = Ledger(max_lag_s=10.0)
    t = t0
    ledger.begin(0, [(t, {"gpu:0": counter(t)})], "test")
    for step, d in enumerate(durations, start=1):
        t += d
        ledger.step(step, [(t, {"gpu:0": counter(t)})], tokens=10)
    t_end = t
    segment = ledger.end([(t_end, {"gpu:0": counter(t_end)})])
    return ledger, segment, ledger.pop_points(), counter, t_end


@settings(max_examples=150, deadline=None)
@given(durations=st.lists(st.floats(0.001, 0.3), min_size=1, max_size=200),
       update_s=st.floats(0.01, 0.5), t0=st.floats(0.0, 1.0))
def test_closure_per_step_joules_add_up_to_the_total(durations, update_s, t0):
    ledger, segment, points, counter, t_end = run_ledger(durations, update_s, t0=t0)
    assert [p.step for p in points] == list(range(1, len(durations) + 1))
    assert all(p.interval_joules >= -1e-9 for p in points)
    total = counter(t_end) - counter(t0)
    assert math.fsum(p.interval_joules for p in points) == pytest.approx(total, abs=1e-9)
    assert points[-1].joules == pytest.approx(total, abs=1e-9)
    assert segment.joules == pytest.approx(total, abs=1e-9)
    for a, b in zip(points, points[1:]):
        assert b.joules >= a.joules - 1e-12


@settings(max_examples=100, deadline=None)
@given(durations=st.lists(st.floats(0.01, 0.05), min_size=60, max_size=200),
       update_s=st.floats(0.1, 0.2))
def test_short_steps_get_no_zero_then_spike(durations, update_s):
    """Steps shorter than the counter's refresh: every interior step gets roughly power x
    duration, never zero followed by a spike."""
    power_w = 100.0
    _, _, points, _, t_end = run_ledger(durations, update_s, power_w)
    times = [0.0]
    for d in durations:
        times.append(times[-1] + d)
    first_update, last_update = update_s * 2, math.floor(t_end / update_s) * update_s
    interior = [p for p, t_start, t_stop in zip(points, times, times[1:])
                if t_start > first_update + update_s and t_stop < last_update - update_s]
    for p in interior:
        ratio = p.interval_joules / (power_w * p.interval_s)
        assert 0.3 < ratio < 3.0, (p, update_s)


def test_the_naive_staircase_would_have_zeros():
    """The reason for attribution: raw differences of a 100 ms counter at 20 ms steps."""
    counter = staircase(100.0, 0.1)
    raw = [counter(0.02 * (i + 1)) - counter(0.02 * i) for i in range(50)]
    assert raw.count(0.0) >= 35
    _, _, points, _, _ = run_ledger([0.02] * 50, 0.1)
    assert all(p.interval_joules > 0 for p in points[6:-6])


def test_points_wait_for_the_next_update_then_all_arrive():
    interp = CounterInterpolator(0.0, 0.0, max_lag_s=10)
    assert interp.observe(0.02, 0.0, key=1) == {}
    assert interp.observe(0.04, 0.0, key=2) == {}
    done = interp.observe(0.12, 10.0, key=3)  # update seen: placed at t=0.08
    assert done == pytest.approx({1: 2.5, 2: 5.0})
    assert interp.close(0.2, 20.0) == pytest.approx({3: 10.0 + 10.0 * (0.12 - 0.08) / 0.12})


def test_a_silent_counter_finalizes_flat_after_max_lag():
    interp = CounterInterpolator(0.0, 5.0, max_lag_s=1.0)
    interp.observe(0.5, 5.0, key=1)
    assert interp.observe(1.7, 5.0, key=2) == {1: 5.0}


def test_interval_metrics_with_log_every_n():
    ledger = Ledger()
    ledger.begin(0, [(0.0, {"a": 0.0})], "test")
    for step in range(1, 7):
        ledger.step(step, [(step * 1.0, {"a": step * 50.0})], tokens=100, log=step % 3 == 0)
    ledger.end([(6.0, {"a": 300.0})])
    points = ledger.pop_points()
    assert [p.step for p in points] == [3, 6]
    assert points[1].interval_steps == 3
    assert points[1].tokens == 300
    assert points[1].step_joules == pytest.approx(points[1].interval_joules / 3)
    assert points[1].joules_per_token == pytest.approx(points[1].interval_joules / 300)
    assert points[1].watts == pytest.approx(points[1].interval_joules / 3.0)


def test_unknown_tokens_give_no_token_figures():
    ledger = Ledger()
    ledger.begin(0, [(0.0, {"a": 0.0})], "test")
    ledger.step(1, [(1.0, {"a": 10.0})], tokens=None)
    ledger.end([(2.0, {"a": 20.0})])
    assert ledger.pop_points()[0].joules_per_token is None
    assert ledger.state_dict()["tokens"] is None


def test_state_round_trip_continues_the_history_and_counts_the_open_segment():
    first = Ledger()
    first.begin(0, [(0.0, {"gpu:0": 1000.0})], "test", sync="log")
    first.step(5, [(5.0, {"gpu:0": 1500.0})], tokens=50)
    state = first.state_dict([(6.0, {"gpu:0": 1600.0})])  # saved mid-segment
    assert state["train_joules"] == pytest.approx(600.0)
    assert state["segments"][0]["ended"] is None and state["segments"][0]["sync"] == "log"

    resumed = Ledger()
    resumed.load_state_dict(state)
    assert resumed.lineage_id == first.lineage_id
    assert resumed.history_j == pytest.approx(600.0)
    resumed.add_wasted(5, 9, {"gpu:0": 200.0}, 4.0, "t0", "t1", "test", "crash")
    resumed.begin(5, [(0.0, {"gpu:0": 0.0})], "test")
    resumed.step(6, [(1.0, {"gpu:0": 100.0})], tokens=10)
    resumed.end([(1.0, {"gpu:0": 100.0})])
    point = resumed.pop_points()[0]
    assert point.joules == pytest.approx(900.0)  # 600 + 200 wasted + 100
    final = resumed.state_dict()
    assert [s["kind"] for s in final["segments"]] == ["fit", "wasted", "fit"]
    assert final["train_joules"] == pytest.approx(900.0)
    assert final["wasted_joules"] == pytest.approx(200.0)
    assert final["tokens"] == 60


def test_a_checkpoint_settles_its_step_at_the_read_its_record_uses():
    """The record of a checkpoint and the point of its step are one number (issue 13.2):
    the boundary of step 2 would otherwise be placed on the line to the counter's *next*
    update (above what the checkpoint read), the record one read later below it."""
    ledger = Ledger()
    ledger.begin(0, [(0.0, {"gpu:0": 0.0})], "test")
    ledger.step(1, [(1.0, {"gpu:0": 100.0})], tokens=None)
    ledger.step(2, [(2.0, {"gpu:0": 200.0})], tokens=None)
    state = ledger.state_dict([(2.1, {"gpu:0": 200.0})])  # the counter has not moved yet
    points = {p.step: p.joules for p in ledger.pop_points()}
    assert points[2] == state["train_joules"] == 200.0
    assert points[1] <= state["train_joules"]
    ledger.step(3, [(3.0, {"gpu:0": 300.0})], tokens=None)  # it goes on from the settle
    ledger.end([(3.0, {"gpu:0": 300.0})])
    later = [p.joules for p in ledger.pop_points()]
    assert later == sorted(later) and later[-1] == 300.0


class FlakyMeter:
    def __init__(self):
        self.value = 0.0
        self.fail = False

    def read(self):
        if self.fail:
            raise MeterReadError("gpu:0", "GPU is lost", partial={"cpu:0": self.value / 10})
        return {"gpu:0": self.value, "cpu:0": self.value / 10}


def test_bridging_uses_last_power_times_gap_and_warns_once():
    now = [0.0]
    meter = FlakyMeter()
    messages = []
    reader = BridgingReader(meter.read, ["gpu:0", "cpu:0"], messages.append, clock=lambda: now[0])
    for i in range(5):  # 200 W for 2 s
        now[0] = i * 0.5
        meter.value = 200.0 * now[0]
        reader.read()
    meter.fail = True
    for t in (2.5, 3.0, 4.0):
        now[0] = t
        meter.value = 200.0 * t  # cpu keeps reporting through partial
        _, values = reader.read()
    assert values["gpu:0"] == pytest.approx(200.0 * 4.0)  # 400 J + 200 W x 2 s gap
    assert values["cpu:0"] == pytest.approx(80.0)  # measured, not bridged
    assert reader.bridged_j["gpu:0"] == pytest.approx(400.0)
    assert len(messages) == 1 and "200.0 W" in messages[0]
    meter.fail = False
    now[0] = 4.5
    meter.value = 200.0 * 4.5
    _, values = reader.read()
    assert values["gpu:0"] == pytest.approx(900.0)
    assert any("answered again" in f for f in reader.flags)


def test_bridging_a_meter_that_raises_anything():
    def broken():
        raise RuntimeError("driver exploded")

    reader = BridgingReader(broken, ["x"], clock=lambda: 1.0)
    assert reader.read() == (1.0, {"x": 0.0})
    assert "driver exploded" in reader.flags[0]


def test_queued_boundaries_are_recorded_before_a_later_step():
    now, later = Ledger(), Ledger()
    for ledger in (now, later):
        ledger.begin(0, [(0.0, {"gpu:0": 0.0})], "test")
    readings = [(s, [(float(s), {"gpu:0": 10.0 * s})]) for s in range(1, 6)]
    for step, observations in readings:
        now.step(step, observations, tokens=4)
    for step, observations in readings[:-1]:
        later.queue(step, observations, tokens=4)
    later.step(*readings[-1], tokens=4)  # a direct step after queued ones keeps the order
    assert [(p.step, p.joules) for p in later.pop_points()] == \
        [(p.step, p.joules) for p in now.pop_points()]
    assert later.optimizer_steps == 5 and later.tokens == 20
