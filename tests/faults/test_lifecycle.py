"""One callback over a model's life: records equal to the points at their steps, a second
model or Trainer, a fit that fails (issue 13, points 2, 3 and 5)."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

from depth import DepthCallback
from tests.doubles.meters import ClockMeter
from tests.support.lightning_models import TinyLM, loader, sqlite_mlflow_logger

QUIET = dict(enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
             accelerator="cpu", devices=1)


def test_each_checkpoint_record_is_the_point_of_its_step(tmp_path):
    """NVML-like counter (refreshes every 20 ms, steps of ~5 ms): a point is placed on the
    line to the counter's next update, so without settling at the checkpoint the record
    (one read, before that update) was below its own step's point."""
    _, logger = sqlite_mlflow_logger(tmp_path, "record-equals-metric")
    every = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=5, save_top_k=-1,
                            filename="{step}")
    trainer = pl.Trainer(callbacks=[DepthCallback(ClockMeter(update_s=0.02)), every],
                         logger=logger, default_root_dir=tmp_path, max_steps=20, **QUIET)
    trainer.fit(TinyLM(step_sleep_s=0.005), loader(n=80))
    history = logger.experiment.get_metric_history(logger.run_id, "energy/joules")
    metric = {m.step: m.value for m in history}
    records = {}
    for path in sorted((tmp_path / "ckpt").glob("step=*.ckpt")):
        record = torch.load(path, weights_only=True)["depth"]
        records[record["optimizer_steps"]] = record["train_joules"]
    assert sorted(records) == [5, 10, 15, 20]
    for step, joules in records.items():
        assert joules == pytest.approx(metric[step], rel=1e-9, abs=1e-9), step
        assert joules >= metric[step - 1], step


class Boom(Callback):
    def __init__(self, error: BaseException, at_step: int = 3):
        self.error, self.at_step = error, at_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.at_step:
            raise self.error


def test_own_run_ends_failed_when_the_fit_raises(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    cb = DepthCallback(ClockMeter(), experiment_name="fails")
    trainer = pl.Trainer(callbacks=[cb, Boom(RuntimeError("data loader broke"))],
                         logger=False, default_root_dir=tmp_path, max_steps=10, **QUIET)
    with pytest.raises(RuntimeError, match="data loader broke"):
        trainer.fit(TinyLM(), loader(n=40))
    assert cb.wait_for_tracking()  # its writer ends the run after fit returns
    run = MlflowClient(uri).get_run(cb.own_run[1])
    assert run.info.status == "FAILED"
    points = MlflowClient(uri).get_metric_history(run.info.run_id, "energy/joules")
    assert sorted(m.step for m in points) == [1, 2, 3]  # nothing measured is lost


def test_own_run_ends_killed_on_keyboard_interrupt(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    cb = DepthCallback(ClockMeter(), experiment_name="interrupted")
    trainer = pl.Trainer(callbacks=[cb, Boom(KeyboardInterrupt())], logger=False,
                         default_root_dir=tmp_path, max_steps=10, **QUIET)
    with pytest.raises(SystemExit):  # Lightning's graceful shutdown exits with 1
        trainer.fit(TinyLM(), loader(n=40))
    assert cb.wait_for_tracking()
    assert MlflowClient(uri).get_run(cb.own_run[1]).info.status == "KILLED"


def _record(path: Path) -> dict:
    return torch.load(path, weights_only=True)["depth"]


def test_a_second_model_starts_its_own_history(tmp_path):
    cb = DepthCallback(ClockMeter({"gpu:0": 100.0}), tracking=False)
    first = pl.Trainer(callbacks=[cb], logger=False, default_root_dir=tmp_path / "a",
                       max_steps=8, **QUIET)
    first.fit(TinyLM(step_sleep_s=0.01), loader(n=40))
    a_joules = cb.ledger.history_j
    second = pl.Trainer(callbacks=[cb], logger=False, default_root_dir=tmp_path / "b",
                        max_steps=2, **QUIET)
    model_b = TinyLM()
    second.fit(model_b, loader(n=40))
    second.save_checkpoint(tmp_path / "b.ckpt")
    record = _record(tmp_path / "b.ckpt")
    assert len(record["segments"]) == 1 and record["optimizer_steps"] == 2
    assert record["train_joules"] < a_joules  # model A's 8 steps are not in model B's depth


def test_fitting_the_same_model_again_continues_its_history(tmp_path):
    cb = DepthCallback(ClockMeter({"gpu:0": 100.0}), tracking=False)
    model = TinyLM(step_sleep_s=0.005)
    first = pl.Trainer(callbacks=[cb], logger=False, default_root_dir=tmp_path / "a",
                       max_steps=4, **QUIET)
    first.fit(model, loader(n=40))
    lineage, a_joules = cb.ledger.lineage_id, cb.ledger.history_j
    second = pl.Trainer(callbacks=[cb], logger=False, default_root_dir=tmp_path / "b",
                        max_steps=3, **QUIET)  # the same weights, trained further
    second.fit(model, loader(n=40))
    second.save_checkpoint(tmp_path / "again.ckpt")
    record = _record(tmp_path / "again.ckpt")
    assert [s["kind"] for s in record["segments"]] == ["fit", "fit"]
    assert cb.ledger.lineage_id == lineage
    assert record["train_joules"] > a_joules


def test_seeded_scripts_get_distinct_run_names(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    names = []
    for attempt in range(2):
        pl.seed_everything(0)  # what every reproducible script does first
        cb = DepthCallback(ClockMeter(), experiment_name="seeded")
        pl.Trainer(callbacks=[cb], logger=False, default_root_dir=tmp_path / str(attempt),
                   max_steps=1, enable_checkpointing=False, **QUIET).fit(TinyLM(), loader(n=8))
        names.append(MlflowClient(uri).get_run(cb.own_run[1]).info.run_name)
    assert names[0] != names[1]


def test_a_resumed_fit_keeps_its_crash_sidecar_beside_its_own_checkpoints(tmp_path):
    """A new user resumed from X/step=6 into Y: the sidecar went to X, so a crash in Y
    after a checkpoint there lost the energy since it (a resume from Y found nothing)."""
    first = ModelCheckpoint(dirpath=tmp_path / "X", filename="{step}", save_top_k=-1,
                            every_n_train_steps=2)
    cb = DepthCallback(ClockMeter(), tracking=False)
    pl.Trainer(callbacks=[cb, first], logger=False, default_root_dir=tmp_path, max_steps=4,
               **QUIET).fit(TinyLM(), loader(n=40))
    before = (tmp_path / "X" / "depth-ledger.json").read_text()
    second = ModelCheckpoint(dirpath=tmp_path / "Y", filename="{step}", save_top_k=-1,
                             every_n_train_steps=2)
    pl.Trainer(callbacks=[DepthCallback(ClockMeter(), tracking=False), second], logger=False,
               default_root_dir=tmp_path, max_steps=8, **QUIET).fit(
        TinyLM(), loader(n=40), ckpt_path=tmp_path / "X" / "step=4.ckpt")
    assert (tmp_path / "Y" / "depth-ledger.json").is_file()
    assert (tmp_path / "X" / "depth-ledger.json").read_text() == before
