"""DepthCallback in a real Lightning Trainer, with a deterministic test meter."""

from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import CSVLogger

from depth import DepthCallback, Provenance
from depth.record.digest import weights_sha256
from depth.record.provenance import provenance_from_checkpoint
from tests.doubles.meters import ClockMeter
from tests.support.lightning_models import TinyLM, loader, sqlite_mlflow_logger

QUIET = dict(enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
             accelerator="cpu", devices=1)


def csv_points(trainer: pl.Trainer) -> list[dict[str, float]]:
    path = Path(trainer.logger.log_dir) / "metrics.csv"
    rows = [r for r in csv.DictReader(path.open()) if r.get("energy/joules")]
    return [{k: float(v) for k, v in r.items() if v != ""} for r in rows]


def fit(tmp_path, callback, model=None, n=84, **trainer_kwargs) -> pl.Trainer:
    trainer = pl.Trainer(callbacks=[callback], logger=CSVLogger(tmp_path, name="csv"),
                         default_root_dir=tmp_path, **{**QUIET, **trainer_kwargs})
    trainer.fit(model or TinyLM(), loader(n=n))
    return trainer


def test_gradient_accumulation_gives_exactly_one_point_per_optimizer_step(tmp_path):
    # 21 batches, 3 per optimizer step: 7 optimizer steps, 7 points
    trainer = fit(tmp_path, DepthCallback(ClockMeter()), n=84, max_epochs=1,
                  accumulate_grad_batches=3, log_every_n_steps=50)
    points = csv_points(trainer)
    assert [int(p["step"]) for p in points] == [1, 2, 3, 4, 5, 6, 7]
    assert trainer.global_step == 7


def test_manual_optimization_counts_the_optimizer_steps_taken(tmp_path):
    trainer = fit(tmp_path, DepthCallback(ClockMeter()), model=TinyLM(manual_every=3), n=48,
                  max_epochs=1)
    assert [int(p["step"]) for p in csv_points(trainer)] == [1, 2, 3, 4]  # 12 batches / 3


def test_metrics_close_and_carry_tokens(tmp_path):
    meter = ClockMeter({"gpu:0": 100.0, "cpu:0": 20.0}, update_s=0.05)
    trainer = fit(tmp_path, DepthCallback(meter), model=TinyLM(step_sleep_s=0.01), n=80,
                  max_epochs=1)
    points = csv_points(trainer)
    assert len(points) == 20
    # closure: the step joules add up to the cumulative total (which starts at 0)
    assert math.fsum(p["energy/step_joules"] for p in points) == pytest.approx(
        points[-1]["energy/joules"], rel=1e-9)
    # 4 sequences x 8 tokens per batch
    for p in points:
        assert p["energy/joules_per_token"] == pytest.approx(p["energy/step_joules"] / 32)
        assert p["energy/joules/gpu:0"] + p["energy/joules/cpu:0"] == pytest.approx(
            p["energy/joules"])
    # 120 W in total: watts of interior points (steps ~10 ms, counter 50 ms) are near it
    interior = [p["energy/watts"] for p in points[3:-3]]
    assert 40 < sorted(interior)[len(interior) // 2] < 300


def test_log_every_n_steps_is_independent_of_the_trainers(tmp_path):
    trainer = fit(tmp_path, DepthCallback(ClockMeter(), log_every_n_steps=4), n=48,
                  max_epochs=1, log_every_n_steps=1)
    points = csv_points(trainer)
    assert [int(p["step"]) for p in points] == [4, 8, 12]
    assert points[1]["energy/step_joules"] == pytest.approx(
        (points[1]["energy/joules"] - points[0]["energy/joules"]) / 4)


def test_tokens_option_and_no_guess_without_token_tensor(tmp_path):
    trainer = fit(tmp_path / "a", DepthCallback(ClockMeter(), tokens_per_batch=lambda b: 7),
                  n=16, max_epochs=1)
    p = csv_points(trainer)[0]
    assert p["energy/joules_per_token"] == pytest.approx(p["energy/step_joules"] / 7)

    cb = DepthCallback(ClockMeter())
    trainer = pl.Trainer(callbacks=[cb], logger=CSVLogger(tmp_path / "b"), max_epochs=1, **QUIET)

    class FloatModel(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(8, 1)

        def training_step(self, batch, batch_idx):
            return self.lin(batch).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer.fit(FloatModel(), torch.utils.data.DataLoader(torch.randn(16, 8), batch_size=4))
    points = csv_points(trainer)
    assert len(points) == 4
    assert all("energy/joules_per_token" not in p for p in points)
    assert cb.ledger.state_dict()["tokens"] is None


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_mlflow_points_are_buffered_and_all_arrive(tmp_path, writer):
    _, logger = sqlite_mlflow_logger(tmp_path, "depth-test")
    callback = DepthCallback(ClockMeter(), mlflow_writer=writer)
    trainer = pl.Trainer(callbacks=[callback], logger=logger,
                         default_root_dir=tmp_path, max_epochs=1, **QUIET)
    trainer.fit(TinyLM(), loader(n=40))
    history = logger.experiment.get_metric_history(logger.run_id, "energy/joules")
    assert sorted(m.step for m in history) == list(range(1, 11))
    values = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert values == sorted(values)
    for key in ("energy/step_joules", "energy/watts", "energy/joules_per_token"):
        assert len(logger.experiment.get_metric_history(logger.run_id, key)) == 10


def test_checkpoint_carries_the_record(tmp_path):
    cb = DepthCallback(ClockMeter({"gpu:0": 100.0}), sync="log")
    trainer = fit(tmp_path, cb, model=TinyLM(step_sleep_s=0.005), n=40, max_epochs=1)
    path = trainer.checkpoint_callback.best_model_path
    checkpoint = torch.load(path, weights_only=True)  # Lightning's default when resuming
    record = checkpoint["depth"]
    assert json.loads(json.dumps(record)) == record  # plain JSON types only
    for field in ("schema", "train_joules", "optimizer_steps", "train_tokens", "devices",
                  "method", "segments", "wasted_joules", "weights_sha256", "parent",
                  "hardware", "created"):
        assert field in record, field
    assert record["optimizer_steps"] == 10 and record["train_tokens"] == 320
    assert record["method"] == "test-clock" and record["sync"] == "log"
    assert record["train_joules"] > 0
    assert record["train_joules"] == pytest.approx(sum(record["devices"].values()))
    assert record["segments"][0]["kind"] == "fit" and record["segments"][0]["end_step"] == 10
    assert record["weights_sha256"] == weights_sha256(checkpoint["state_dict"])
    assert record["parameters"] == sum(p.numel() for p in TinyLM().parameters())
    assert len(record["config_sha256"]) == 64
    assert "test-clock: a third-party meter" in record["known_error"]
    assert record["hardware"]["cpu_model"] and record["hardware"]["num_nodes"] == 1
    # no country configured: CodeCarbon's world average, labelled as such
    assert record["carbon"]["label"] == "estimate"
    assert "world-average" in record["carbon"]["basis"]
    assert record["carbon"]["kg_co2eq"] == pytest.approx(
        record["train_joules"] / 3.6e6 * record["carbon"]["g_co2eq_per_kwh"] / 1000)
    assert record["pue"] is None and record["facility_joules"] is None
    assert provenance_from_checkpoint(path).train_joules == record["train_joules"]
    # a save after fit (a common last line) carries the finished history too
    trainer.save_checkpoint(tmp_path / "final.ckpt")
    final = provenance_from_checkpoint(tmp_path / "final.ckpt")
    assert final.train_joules == pytest.approx(cb.ledger.history_j)
    assert final.train_joules >= record["train_joules"]
    assert final.segments[0]["ended"] is not None
    assert Provenance.from_dict(record).to_dict()["train_kwh"] == pytest.approx(
        record["train_joules"] / 3.6e6)


def test_country_and_pue_give_facility_energy_and_its_carbon(tmp_path):
    cb = DepthCallback(ClockMeter({"gpu:0": 100.0}), country_iso_code="FRA", pue=1.2)
    trainer = fit(tmp_path, cb, model=TinyLM(step_sleep_s=0.005), n=20, max_epochs=1)
    record = provenance_from_checkpoint(trainer.checkpoint_callback.best_model_path)
    assert record.facility_joules == pytest.approx(1.2 * record.train_joules)
    assert record.carbon["country_iso_code"] == "FRA" and "FRA" in record.carbon["basis"]
    assert 20 < record.carbon["g_co2eq_per_kwh"] < 120  # France's low-carbon mix
    assert record.carbon["kg_co2eq"] == pytest.approx(
        record.facility_joules / 3.6e6 * record.carbon["g_co2eq_per_kwh"] / 1000)


class FailAt(Callback):
    """Makes the test meter lose a GPU at a given optimizer step."""

    def __init__(self, meter: ClockMeter, step: int):
        self.meter, self.step = meter, step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            self.meter.fail["gpu:0"] = "NVML: GPU is lost"


def test_meter_failure_mid_run_warns_once_bridges_and_flags(tmp_path):
    meter = ClockMeter({"gpu:0": 100.0, "cpu:0": 10.0})
    cb = DepthCallback(meter)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = pl.Trainer(callbacks=[FailAt(meter, 5), cb],
                             logger=CSVLogger(tmp_path, name="csv"), default_root_dir=tmp_path,
                             max_epochs=1, **QUIET)
        trainer.fit(TinyLM(step_sleep_s=0.02), loader(n=120))
    assert trainer.global_step == 30  # training went on
    failures = [w for w in caught if "bridging with its last power" in str(w.message)]
    assert len(failures) == 1
    record = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=False)["depth"]
    assert any("gpu:0" in f and "estimate" in f for f in record["flags"])
    seg = cb.ledger.segments[0]
    assert seg.devices["cpu:0"] > 0
    # bridged at the last measured power (100 W): the GPU keeps its share, about 10x the CPU
    assert 5 < seg.devices["gpu:0"] / seg.devices["cpu:0"] < 15
    points = csv_points(trainer)
    assert all(b["energy/joules"] >= a["energy/joules"] for a, b in zip(points, points[1:]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"meter": "magic"}, "meter must be one of"),
     ({"meter": object()}, "EnergyMeter protocol"),
     ({"log_every_n_steps": 0}, "log_every_n_steps must be an int >= 1"),
     ({"sync": "always"}, "sync must be one of none, log, step"),
     ({"tokens_per_batch": -3}, "tokens_per_batch must be"),
     ({"sidecar_interval_s": 0}, "sidecar_interval_s must be a number of seconds, > 0"),
     ({"mlflow_writer": "fast"}, "mlflow_writer must be one of auto, process, thread"),
     ({"pue": 0.8}, "pue must be a number from 1 to 5"),
     ({"pue": "1.2"}, "pue must be a number from 1 to 5"),
     ({"pue": 1e308}, "pue must be a number from 1 to 5"),
     ({"sidecar": "no"}, "sidecar must be True or False"),
     ({"log_checkpoints": "no"}, "log_checkpoints must be True or False"),
     ({"experiment_name": 5}, "experiment_name must be a non-empty string"),
     ({"flush_interval_s": float("inf")}, "flush_interval_s must be a number of seconds"),
     ({"spool_dir": "/etc/passwd"}, "spool_dir must be a folder"),
     ({"spool_dir": 5}, "spool_dir must be a folder path"),
     ({"country_iso_code": "XX"}, "country_iso_code must be an ISO 3166 alpha-3 code"),
     ({"parent": "no/such.ckpt"}, "parent must be an existing checkpoint file"),
     ({"parent": "."}, r"parent must be a checkpoint file; \. is a directory"),
     ({"parent": 42}, "parent must be a checkpoint path")])
def test_bad_options_fail_at_construction_naming_the_option(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message) as raised:
        DepthCallback(**kwargs)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("count", [lambda batch: "many", lambda batch: -1,
                                   lambda batch: 1 / 0])
def test_a_broken_tokens_per_batch_turns_token_metrics_off_and_training_goes_on(tmp_path,
                                                                               count):
    cb = DepthCallback(ClockMeter(), tokens_per_batch=count, tracking=False)
    with pytest.warns(UserWarning, match=r"tokens_per_batch\(batch\) .*non-negative int"):
        trainer = fit(tmp_path, cb, n=20, max_epochs=1)
    assert trainer.global_step == 5
    assert cb.ledger.state_dict()["tokens"] is None
    assert all("energy/joules_per_token" not in p for p in csv_points(trainer))
