"""auto_meter's choices, and the combined meter."""

from __future__ import annotations

import pytest

from depth.meters import EnergyMeter, MeterReadError, MeterUnavailable, auto_meter, make_meter
from tests.doubles.powercap import FakePowercap
from tests.doubles.pynvml_double import FakeNvml, gpus

CHEAP_ESTIMATE = {"tdp_w": 10.0, "ram_power_w": 2.0}


def by_method(meter):
    return {s.method: s for s in meter.sources}


def test_counter_gpus_and_rapl_when_both_exist(tmp_path):
    FakePowercap.server(tmp_path)
    meter = auto_meter(nvml=FakeNvml(gpus(2)), powercap_root=tmp_path, visible_devices="1")
    assert meter.method == "nvml-counter+rapl"
    assert meter.devices() == ["gpu:0", "cpu:0", "cpu:1", "dram:0", "dram:1"]
    assert meter.methods()["gpu:0"] == "nvml-counter"
    assert meter.rejected == []
    assert isinstance(meter, EnergyMeter)
    meter.close()


def test_old_gpu_falls_back_to_power_sampling_and_says_why(tmp_path):
    meter = auto_meter(nvml=FakeNvml(gpus(1, energy_mj=None)), powercap_root=tmp_path / "none",
                       visible_devices=None, estimate_kwargs=CHEAP_ESTIMATE)
    sources = by_method(meter)
    assert not sources["nvml-counter"].chosen
    assert "no total-energy counter" in sources["nvml-counter"].reason
    assert sources["nvml-power"].chosen and "20 Hz" in sources["nvml-power"].reason
    assert meter.methods() == {"gpu:0": "nvml-power", "cpu:0": "estimate", "dram:0": "estimate"}
    meter.close()


def test_nothing_measurable_gives_a_labelled_estimate_with_reasons(tmp_path):
    meter = auto_meter(nvml=FakeNvml(driver=False), powercap_root=tmp_path / "none",
                       estimate_kwargs=CHEAP_ESTIMATE)
    sources = by_method(meter)
    assert meter.method == "estimate"
    assert "no NVIDIA driver" in sources["nvml-counter"].reason
    assert "nvml-power" not in sources  # no driver: power sampling cannot help
    assert "does not exist" in sources["rapl"].reason
    assert sources["estimate"].chosen and "does not exist" in sources["estimate"].reason
    meter.close()


def test_a_failed_device_keeps_the_others_in_partial(tmp_path):
    tree = FakePowercap.server(tmp_path)
    nvml = FakeNvml(gpus(1))
    meter = auto_meter(nvml=nvml, powercap_root=tmp_path, visible_devices=None)
    tree.set("0", 1_000_000 + 4_000_000)
    nvml.gpus[0].lost = True
    with pytest.raises(MeterReadError) as info:
        meter.read()
    assert info.value.device == "gpu:0"
    assert info.value.partial["cpu:0"] == pytest.approx(4.0)
    assert "gpu:0" not in info.value.partial


def test_everything_off_is_unavailable():
    with pytest.raises(MeterUnavailable, match="turned off"):
        auto_meter(gpu="off", cpu="off")


def test_bad_choices_and_names_are_rejected_with_the_valid_ones():
    with pytest.raises(ValueError, match="auto, counter, power, off"):
        auto_meter(gpu="fast")
    with pytest.raises(ValueError, match="auto, nvml-counter, nvml-power, rapl, estimate"):
        make_meter("magic")


def test_make_meter_passes_a_meter_through_and_builds_by_name(tmp_path):
    FakePowercap.server(tmp_path)
    rapl = make_meter("rapl", root=tmp_path)
    assert rapl.method == "rapl"
    assert make_meter(rapl) is rapl


def test_without_codecarbon_the_estimate_is_rejected_with_a_reason_not_a_crash(tmp_path):
    """As on the GPU image, which has torch, Lightning and nvidia-ml-py only."""
    import json
    import subprocess
    import sys

    script = f"""
import sys, json
sys.modules["codecarbon"] = None  # makes `import codecarbon` fail, as when not installed
from depth.meters import MeterUnavailable, auto_meter
try:
    auto_meter(powercap_root={str(tmp_path / "none")!r})
except MeterUnavailable as err:
    print(json.dumps({{"unavailable": str(err)}}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    message = json.loads(out.stdout)["unavailable"]
    assert "codecarbon is not installed" in message and "NVML" in message
