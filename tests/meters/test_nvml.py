"""NVML backends against the pynvml test double (injected, not patched)."""

from __future__ import annotations

import time

import pytest

from depth.meters import CounterNotSupported, MeterReadError, MeterUnavailable
from depth.meters.nvml import NvmlCounterMeter, NvmlPowerMeter, parse_visible_devices
from tests.support.blocking import read_returns_while_sampler_is_stuck, stuck_sampler
from tests.doubles.pynvml_double import FakeGpu, FakeNvml, gpus


def counter(nvml: FakeNvml, gpu_list=None, visible=None) -> NvmlCounterMeter:
    return NvmlCounterMeter(gpu_list, nvml=nvml, visible_devices=visible)


def test_counter_reads_joules_since_creation_for_each_gpu():
    nvml = FakeNvml(gpus(2, energy_mj=5_000_000))
    meter = counter(nvml)
    assert meter.devices() == ["gpu:0", "gpu:1"]
    assert meter.read() == {"gpu:0": 0.0, "gpu:1": 0.0}
    nvml.gpus[0].energy_mj += 1_500  # 1.5 J
    nvml.gpus[1].energy_mj += 250_000  # 250 J
    assert meter.read() == pytest.approx({"gpu:0": 1.5, "gpu:1": 250.0})
    meter.close()
    assert nvml.initialized == 0


@pytest.mark.parametrize(
    ("visible", "ordinals", "expected_nvml"),
    [
        (None, None, [0, 1, 2]),  # unset: every GPU
        ("2", None, [2]),  # index form
        ("2,0", [1], [0]),  # CUDA ordinal 1 of the visible list is NVML index 0
        ("GPU-cccccccc", None, [2]),  # UUID prefix form
        ("GPU-bbbbbbbb-1111-2222-3333-444444444444,GPU-aaaa", None, [1, 0]),
        ("1,7,0", None, [1]),  # CUDA stops at the first invalid entry
    ],
)
def test_only_the_gpus_this_process_uses_are_metered(visible, ordinals, expected_nvml):
    meter = counter(FakeNvml(gpus(3)), ordinals, visible)
    assert [g.nvml_index for g in meter.gpus] == expected_nvml
    assert meter.devices() == [f"gpu:{o}" for o in (ordinals or range(len(expected_nvml)))]


@pytest.mark.parametrize(
    ("visible", "ordinals", "message"),
    [
        ("", None, "sees no GPU"),
        ("MIG-abc", None, "MIG"),
        ("GPU-ffff", None, "matches 0 GPUs"),
        ("0", [3], "GPU 3 is not visible"),
    ],
)
def test_unusable_gpu_selection_is_unavailable_with_a_reason(visible, ordinals, message):
    nvml = FakeNvml(gpus(2))
    with pytest.raises(MeterUnavailable, match=message):
        counter(nvml, ordinals, visible)
    assert nvml.initialized == 0  # NVML released on failure


def test_parse_visible_devices():
    assert parse_visible_devices(None) is None
    assert parse_visible_devices("") == []
    assert parse_visible_devices("0, 1,,2") == ["0", "1"]
    assert parse_visible_devices("1,-1,2") == ["1"]


def test_no_driver_is_unavailable_with_a_reason():
    with pytest.raises(MeterUnavailable, match="no NVIDIA driver"):
        counter(FakeNvml(driver=False))


def test_old_gpu_without_counter_is_not_supported():
    nvml = FakeNvml([FakeGpu(name="Tesla P100", energy_mj=None)])
    with pytest.raises(CounterNotSupported, match="Tesla P100.*no total-energy counter"):
        counter(nvml)


def test_counter_reset_is_bridged_never_negative_and_flagged():
    nvml = FakeNvml(gpus(1, energy_mj=9_000_000))
    meter = counter(nvml)
    nvml.gpus[0].energy_mj += 2_000  # +2 J
    assert meter.read()["gpu:0"] == pytest.approx(2.0)
    nvml.gpus[0].energy_mj = 500  # driver reload: counter restarts, 0.5 J since
    after = meter.read()["gpu:0"]
    assert after == pytest.approx(2.5)
    nvml.gpus[0].energy_mj += 1_000
    assert meter.read()["gpu:0"] == pytest.approx(3.5)
    assert len(meter.flags()) == 1 and "went backwards 1 time" in meter.flags()[0]


def test_gpu_lost_mid_run_raises_read_error_with_the_other_gpus():
    nvml = FakeNvml(gpus(2))
    meter = counter(nvml)
    nvml.gpus[0].energy_mj += 1_000
    nvml.gpus[1].energy_mj += 3_000
    nvml.gpus[0].lost = True
    with pytest.raises(MeterReadError) as info:
        meter.read()
    assert info.value.device == "gpu:0"
    assert "GPU is lost" in info.value.reason
    assert info.value.partial == pytest.approx({"gpu:1": 3.0})


def test_hardware_names_gpus_and_driver():
    meter = counter(FakeNvml(gpus(1)))
    hw = meter.hardware()
    assert hw["driver"] == "570.86.15"
    assert hw["gpus"][0]["name"] == "NVIDIA H100 80GB HBM3"
    assert hw["gpus"][0]["uuid"].startswith("GPU-aaaaaaaa")


# --------------------------------------------------------------------------- power fallback


def test_power_meter_prefers_the_instant_field_and_falls_back_to_power_usage():
    fleet = gpus(2, energy_mj=None)
    fleet[1].instant_field = False
    meter = NvmlPowerMeter(nvml=FakeNvml(fleet), visible_devices=None)
    assert meter.sources == {"gpu:0": "POWER_INSTANT field", "gpu:1": "nvmlDeviceGetPowerUsage"}
    meter.close()


def test_power_meter_starts_lazily_samples_at_10hz_or_more_and_stops_on_close():
    gpu = FakeGpu(energy_mj=None, power_mw=200_000)  # 200 W
    meter = NvmlPowerMeter(nvml=FakeNvml([gpu]), visible_devices=None, period_s=0.05)
    probes = gpu.calls["field_values"]
    time.sleep(0.3)
    assert gpu.calls["field_values"] == probes  # no thread before the first read
    t0 = time.monotonic()
    meter.read()
    time.sleep(1.0)
    energy = meter.read()["gpu:0"]
    elapsed = time.monotonic() - t0
    samples = gpu.calls["field_values"] - probes
    assert samples >= 10 * elapsed * 0.8  # >= 10 Hz, with slack for a loaded CI machine
    # Constant 200 W: the trapezoid integral is exact up to the last sample.
    creation_to_last_read = elapsed + 0.3
    assert 200 * (creation_to_last_read - 0.3) <= energy <= 200 * (creation_to_last_read + 0.1)
    meter.close()
    stopped = gpu.calls["field_values"]
    time.sleep(0.2)
    assert gpu.calls["field_values"] == stopped


def test_power_meter_read_never_waits_for_a_slow_sample():
    nvml = FakeNvml([FakeGpu(energy_mj=None)])
    meter = NvmlPowerMeter(nvml=nvml, visible_devices=None)
    block, inside, release = stuck_sampler()
    real = nvml.nvmlDeviceGetFieldValues

    def stuck(handle, ids):
        block()
        return real(handle, ids)

    nvml.nvmlDeviceGetFieldValues = stuck  # the sampler thread now blocks in NVML
    assert read_returns_while_sampler_is_stuck(meter.read, inside), "read() blocked"
    release.set()
    meter.close()


def test_power_meter_reports_a_lost_gpu_with_partial_readings():
    fleet = gpus(2, energy_mj=None)
    meter = NvmlPowerMeter(nvml=FakeNvml(fleet), visible_devices=None, period_s=0.02)
    meter.read()
    fleet[1].lost = True
    time.sleep(0.2)
    with pytest.raises(MeterReadError) as info:
        meter.read()
    assert info.value.device == "gpu:1"
    assert set(info.value.partial) == {"gpu:0"} and info.value.partial["gpu:0"] > 0
    meter.close()


def test_power_meter_rejects_slow_sampling():
    with pytest.raises(ValueError, match="10 Hz"):
        NvmlPowerMeter(nvml=FakeNvml(gpus(1)), visible_devices=None, period_s=0.5)
