"""`BridgingReader` on faulty readings from any meter: NaN, inf, negatives, non-numbers,
counter resets, implausible jumps, and a meter that never answers."""

from __future__ import annotations

import math

import pytest

from depth.accounting.reader import (
    CLASS_MAX_POWER_W,
    BridgingReader,
    max_power_w,
    power_limits_w,
)
from tests.doubles.meters import ScriptedMeter


def scripted_reads(readings: list[object], dt_s: float = 0.5, **kwargs):
    """(reader, values per read): `readings` read every `dt_s` on a fake clock, 100 W
    when they climb by 50 J per read."""
    now = [0.0]
    meter = ScriptedMeter(readings, tail_j=None, **kwargs)
    messages: list[str] = []
    reader = BridgingReader(meter.read, meter.devices(), messages.append, clock=lambda: now[0])
    values = []
    for i in range(len(readings)):
        now[0] = i * dt_s
        values.append(reader.read()[1][meter.device])
    return reader, values, messages


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, -5.0, None, "n/a"])
def test_an_invalid_reading_is_a_failed_read_bridged_and_flagged(bad):
    reader, values, messages = scripted_reads([0.0, 50.0, 100.0, 150.0, bad, bad, 300.0])
    assert all(math.isfinite(v) for v in values)
    assert values[4] == pytest.approx(200.0) and values[5] == pytest.approx(250.0)  # 100 W
    assert values[6] == pytest.approx(300.0)  # the counter kept counting: measured again
    assert reader.bridged_j["gpu:0"] == pytest.approx(100.0)
    assert any("invalid reading" in f for f in reader.flags)
    assert len(messages) == 1 and "100.0 W" in messages[0]


def test_a_decrease_is_a_reset_counted_on_from_the_new_baseline():
    reader, values, messages = scripted_reads([0.0, 50.0, 100.0, 150.0, 200.0, 3.0, 53.0,
                                               103.0])
    assert values[5] == pytest.approx(250.0)  # the reset's interval: 100 W x 0.5 s
    assert values[6:] == pytest.approx([300.0, 350.0])  # +50 J per read, never frozen
    assert reader.bridged_j["gpu:0"] == pytest.approx(50.0)
    assert any("a reset" in f and "200 -> 3" in f for f in reader.flags)
    assert len(messages) == 1


def test_an_implausible_jump_is_bridged_and_flagged_not_counted():
    reader, values, _ = scripted_reads([0.0, 50.0, 100.0, 150.0, 1_000_150.0, 1_000_200.0])
    assert values[4] == pytest.approx(200.0) and values[5] == pytest.approx(250.0)
    assert any("implausible jump" in f and "1e+06 J" in f for f in reader.flags)


def test_the_jump_bound_is_three_times_a_known_power_limit():
    limits = power_limits_w({"gpus": [{"device": "gpu:0", "power_limit_w": 300.0}]})
    assert limits == {"gpu:0": 300.0}
    assert max_power_w("gpu:0", limits) == 900.0
    assert max_power_w("gpu:1", limits) == CLASS_MAX_POWER_W["gpu"]
    # 1000 J in 1 s: plausible for a GPU of unknown limit, not for a 300 W one
    _, unknown, _ = scripted_reads([0.0, 1000.0], dt_s=1.0)
    now = [0.0]
    meter = ScriptedMeter([0.0, 1000.0], tail_j=None)
    limited = BridgingReader(meter.read, ["gpu:0"], clock=lambda: now[0], limits_w=limits)
    limited.read()
    now[0] = 1.0
    assert unknown[1] == 1000.0 and limited.read()[1]["gpu:0"] == 0.0
    assert "more than 900 W" in limited.flags[0]


def test_counter_updates_bunched_in_a_short_read_gap_are_not_jumps():
    # a counter refreshed every 100 ms, read 1 ms after an update: 70 J in 1 ms is 70 kW
    # for that gap, but at most a second's worth of energy is never implausible
    reader, values, _ = scripted_reads([0.0, 70.0, 140.0], dt_s=0.001)
    assert values == [0.0, 70.0, 140.0] and reader.flags == []


def test_a_meter_that_never_answers_is_unmeasured_never_a_measured_zero():
    reader, values, messages = scripted_reads([math.nan, math.nan, math.nan])
    assert values == [0.0, 0.0, 0.0] and reader.unmeasured == ["gpu:0"]
    assert "before any valid reading" in reader.flags[0] and len(messages) == 1


def test_a_meter_that_answers_late_counts_from_its_first_valid_reading():
    # 5000 J includes energy spent before the fit began: it must not be counted
    reader, values, _ = scripted_reads([math.nan, 5000.0, 5050.0])
    assert values == [0.0, 0.0, 50.0] and reader.unmeasured == []
    assert any("first valid reading" in f for f in reader.flags)


def test_a_reset_while_failing_continues_from_the_bridged_value():
    reader, values, _ = scripted_reads([0.0, 50.0, 100.0, math.nan, 10.0, 60.0])
    assert values[3] == pytest.approx(150.0)
    assert values[4] == pytest.approx(200.0) and values[5] == pytest.approx(250.0)
    assert any("a reset" in f for f in reader.flags)


def test_repeated_faults_are_counted_not_listed_one_by_one():
    readings: list[object] = [0.0, 50.0]
    for _ in range(20):  # a meter that resets at every read
        readings += [60.0, 10.0]
    reader, values, messages = scripted_reads(readings)
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert len(messages) == 3 and len(reader.flags) == 4
    assert reader.flags[-1] == "gpu:0: 20 resets in all"


class Checked(float):
    """A float the reader's inlined common path does not take: it goes through `_good`."""


def read_all(script: list[tuple[float, dict[str, object]]], wrap: type) -> str:
    """Everything a reader reports after reading `script` ((time, reading) per read)."""
    now = [0.0]
    it = iter(script)

    def read() -> dict[str, object]:
        now[0], reading = next(it)
        return {d: wrap(v) if isinstance(v, float) else v for d, v in reading.items()}

    reader = BridgingReader(read, ["gpu:0", "cpu:0"], clock=lambda: now[0])
    values = [reader.read() for _ in script]
    return repr((values, reader.flags, reader.bridged_j, reader.power_w))


def test_the_inlined_common_read_counts_and_flags_exactly_as_the_checked_path():
    # Random readings with resets, jumps, NaN, gaps and failed reads, read once as plain
    # floats (mostly the inlined path) and once as `Checked` floats (never it): the same
    # values, flags, bridged joules and power estimates, to the last bit.
    import random

    rng = random.Random(12)
    for _ in range(200):
        t_s, energy_j, script = 0.0, {"gpu:0": 0.0, "cpu:0": 10.0}, []
        for _ in range(rng.randint(1, 40)):
            t_s += rng.choice([0.001, 0.2, 0.9, 1.0, 2.5, 0.0])
            reading: dict[str, object] = {}
            for device in energy_j:
                u = rng.random()
                if u < 0.85:
                    energy_j[device] += rng.choice([0.0, 0.5, 80.0, 3999.0, 5000.0]) * rng.random()
                elif u < 0.9:
                    energy_j[device] = rng.choice([0.0, energy_j[device] / 2])
                reading[device] = (energy_j[device] if rng.random() < 0.95
                                   else rng.choice([math.nan, -1.0, None]))
            script.append((t_s, reading))

        assert read_all(script, float) == read_all(script, Checked)
