"""Meter faults in real Lightning fits, for any meter: NaN, resets, implausible jumps, a
meter that never answers (record, card, MLflow, `depth report`), and `depth verify` on
records that carry non-finite joules."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from depth import DepthCallback
from depth.accounting.reader import UNMEASURED as READER_UNMEASURED
from depth.cli import main
from depth.meters.nvml import NvmlCounterMeter
from depth.record.card import card_metadata, card_yaml
from depth.record.digest import CHECKPOINT_KEY, record_sha256
from depth.record.provenance import provenance_from_checkpoint
from depth.record.uncertainty import UNMEASURED
from depth.record.verify import verify_checkpoint
from tests.doubles.meters import ScriptedMeter
from tests.doubles.pynvml_double import FakeGpu, FakeNvml
from tests.support.lightning_models import TinyLM, loader


def fit(meter, root: Path, steps: int = 6, **options) -> tuple[pl.Trainer, DepthCallback]:
    """A real fit of `steps` optimizer steps; the crash sidecar (which reads the meter on
    its own thread) is off, so that each scripted reading goes to the training thread."""
    options.setdefault("tracking", False)
    callback = DepthCallback(meter, sidecar=False, **options)
    trainer = pl.Trainer(callbacks=[callback], logger=False, max_steps=steps,
                         default_root_dir=root, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(TinyLM(), loader(n=4 * steps))
    return trainer, callback


def checkpoint_of(trainer: pl.Trainer) -> Path:
    return Path(trainer.checkpoint_callback.best_model_path)


def numbers(meter: ScriptedMeter) -> list[float]:
    return [float(v) for v in meter.returned if isinstance(v, (int, float))]


def test_nan_readings_are_bridged_never_sealed_into_the_record(tmp_path):
    # ~1 mJ per read before the NaNs, 48 J after: the bridge (last power x gap) stays far
    # below the counter however slow the machine, so the counter's value is what counts
    meter = ScriptedMeter([0.0, 0.001, 0.002, math.nan, math.nan, 50.0])
    trainer, _ = fit(meter, tmp_path)
    record = provenance_from_checkpoint(checkpoint_of(trainer))
    assert math.isfinite(record.train_joules) and record.train_joules > 0
    assert all(math.isfinite(j) for j in record.devices.values())
    # the counter kept counting through the NaNs: the record is its measured value
    assert record.train_joules in numbers(meter)
    assert any("invalid reading nan" in f for f in record.flags)
    assert verify_checkpoint(checkpoint_of(trainer)).status == 0


def test_a_counter_reset_is_counted_on_from_the_new_baseline_and_flagged(tmp_path):
    meter = ScriptedMeter([0.0, 10.0, 20.0, 30.0, 40.0, 0.0, 10.0])  # then +10 J per read
    trainer, callback = fit(meter, tmp_path)
    record = provenance_from_checkpoint(checkpoint_of(trainer))
    bridged_j = callback.ranks.reader.bridged_j["gpu:0"]
    assert 0 < bridged_j < 1000  # the reset's interval, at the last power
    # 40 J before the reset, the bridged interval, then the new count: nothing frozen
    after_reset_j = record.train_joules - 40.0 - bridged_j
    assert after_reset_j > 0
    assert any(after_reset_j == pytest.approx(v) for v in numbers(meter)[5:])
    assert any("a reset" in f for f in record.flags)


def test_an_implausible_jump_is_flagged_and_bridged_not_counted(tmp_path):
    meter = ScriptedMeter([0.0, 10.0, 20.0, 30.0, 1_000_030.0])  # a 1 MJ jump in one read
    trainer, _ = fit(meter, tmp_path)
    record = provenance_from_checkpoint(checkpoint_of(trainer))
    assert record.train_joules < 10_000
    assert any("implausible jump of 1e+06 J" in f for f in record.flags)


@pytest.mark.parametrize("fault", ["raises", "nan"])
def test_a_meter_failing_from_the_start_is_unmeasured_everywhere(tmp_path, monkeypatch,
                                                                  capsys, fault):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    meter = ScriptedMeter([], tail_j=None) if fault == "raises" else ScriptedMeter(
        [math.nan] * 1000)
    trainer, callback = fit(meter, tmp_path, tracking=True, experiment_name="faults",
                            mlflow_writer="thread", country_iso_code="FRA")
    record = provenance_from_checkpoint(checkpoint_of(trainer))
    assert READER_UNMEASURED == UNMEASURED  # the two stages name it alike
    assert record.method == UNMEASURED and record.measured is False
    assert record.carbon is None and record.uncertainty is None
    assert record.to_dict()["train_kwh"] is None
    assert any("no device ever gave a valid energy reading" in f for f in record.flags)
    assert record.segments[-1]["method"] == UNMEASURED
    assert verify_checkpoint(checkpoint_of(trainer)).status == 0

    card = card_metadata(record)
    assert "co2_eq_emissions" not in card  # no 0 g CO2 claim
    assert card["depth"]["train_kwh"] is None and card["depth"]["measured"] is False
    assert "UNMEASURED" in card_yaml(record)

    from mlflow import MlflowClient

    run = MlflowClient(uri).get_run(callback.own_run[1])
    assert run.data.tags["depth.method"] == UNMEASURED
    assert run.data.tags["depth.measured"] == "false"
    assert run.data.tags["depth.train_kwh"] == UNMEASURED
    assert run.data.tags["depth.train_joules"] == UNMEASURED
    assert "depth.train_kwh" not in run.data.metrics  # no 0 kWh metric
    assert not [k for k in run.data.metrics if k.startswith("energy/")]  # nor 0 J per step

    status = main(["report", "--experiment", "faults", "--tracking-uri", uri,
                   "--out", str(tmp_path / "report"), "--no-log"])
    out = capsys.readouterr().out
    assert status == 0
    row = out.splitlines()[2]  # the title, the header, then the one model
    assert "unmeasured" in row and "False" in row and " 0 " not in row

    assert main(["provenance", str(checkpoint_of(trainer))]) == 0
    shown = capsys.readouterr().out
    assert "train energy       unmeasured" in shown and "UNMEASURED" in shown
    assert "0.0 J (0 kWh)" not in shown


def test_a_late_meter_counts_from_its_first_valid_reading_and_is_measured(tmp_path):
    meter = ScriptedMeter([math.nan, math.nan, 5000.0])  # 5000 J spent before the fit
    trainer, _ = fit(meter, tmp_path)
    record = provenance_from_checkpoint(checkpoint_of(trainer))
    assert record.method == "test-script" and record.measured is True
    assert 0 < record.train_joules < 5000.0
    assert any("first valid reading" in f for f in record.flags)


def _seal(record: dict) -> dict:
    record["record_sha256"] = record_sha256(record)
    return record


@pytest.mark.parametrize("field,value", [("train_joules", math.nan),
                                         ("train_joules", math.inf),
                                         ("devices", {"gpu:0": -1.0}),
                                         ("segments", [{"joules": math.nan, "devices": {}}])])
def test_verify_fails_a_sealed_record_with_non_finite_or_negative_joules(tmp_path, capsys,
                                                                        field, value):
    trainer, _ = fit(ScriptedMeter([0.0]), tmp_path, steps=2)
    ckpt = torch.load(checkpoint_of(trainer), weights_only=True)
    ckpt[CHECKPOINT_KEY][field] = value  # what a meter fault once sealed, digest and all
    _seal(ckpt[CHECKPOINT_KEY])
    path = tmp_path / "nan.ckpt"
    torch.save(ckpt, path)
    status = main(["verify", str(path)])
    captured = capsys.readouterr()
    text = (captured.out + captured.err).strip()
    assert status == 1 and len(text.splitlines()) == 1 and "Traceback" not in text
    assert field in text and "finite" in text


class GpuJump(Callback):
    """The simulated GPU's counter advances 5 J per batch, and 1500 J in the third."""

    def __init__(self, gpu: FakeGpu):
        self.gpu, self.batches = gpu, 0

    def on_train_batch_start(self, *args) -> None:
        self.batches += 1
        self.gpu.energy_mj += 1_500_000.0 if self.batches == 3 else 5_000.0


@pytest.mark.parametrize("limit_w,flagged", [(300.0, True), (None, False)])
def test_the_jump_bound_uses_the_gpus_power_limit_from_nvml(tmp_path, limit_w, flagged):
    # 1500 J within a step: more than 3 x 300 W can draw in a second, not more than the
    # generous bound of a GPU whose limit is unknown
    gpu = FakeGpu(power_limit_mw=limit_w and limit_w * 1000)
    meter = NvmlCounterMeter([0], nvml=FakeNvml([gpu]), visible_devices=None)
    trainer = pl.Trainer(callbacks=[GpuJump(gpu), DepthCallback(meter, tracking=False,
                                                                sidecar=False)],
                         logger=False, max_steps=5, default_root_dir=tmp_path,
                         enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", devices=1)
    trainer.fit(TinyLM(), loader(n=20))
    record = provenance_from_checkpoint(checkpoint_of(trainer))
    assert record.hardware["ranks"][0]["gpus"][0].get("power_limit_w") == limit_w
    jumps = [f for f in record.flags if "implausible jump" in f]
    assert bool(jumps) is flagged
    if flagged:
        assert "more than 900 W" in jumps[0] and record.train_joules < 1000
    else:
        assert record.train_joules > 1500


def test_a_meter_that_fails_mid_run_makes_the_record_partly_estimated(tmp_path):
    """Bridged energy is an estimate: a meter that answers twice and then never again had
    ~all of its joules extrapolated, yet the record said measured: true (a new user)."""
    meter = ScriptedMeter([0.0, 10.0], tail_j=None)  # every later read raises
    trainer, _ = fit(meter, tmp_path)
    record = provenance_from_checkpoint(checkpoint_of(trainer))
    assert record.method == "test-script" and record.train_joules > 10.0
    assert record.measured is False
    assert card_metadata(record)["depth"]["measurement"].startswith("PARTLY ESTIMATED")
