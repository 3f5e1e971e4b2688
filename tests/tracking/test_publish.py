"""Checkpoint records in MLflow: run tags and artifact, one LoggedModel per checkpoint,
registered versions with the same tags. Real SQLite store."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import pytorch_lightning as pl
import torch
from mlflow import MlflowClient
from pytorch_lightning.callbacks import ModelCheckpoint

from depth import DepthCallback
from depth.tracking.publish import MODEL_ARTIFACT, depth_tags, register_model
from tests.doubles.meters import ClockMeter
from tests.support.lightning_models import TinyLM, loader, sqlite_mlflow_logger

TAGS = ("depth.train_joules", "depth.train_kwh", "depth.optimizer_steps",
        "depth.train_tokens", "depth.method", "depth.weights_sha256")


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_every_checkpoint_becomes_a_logged_model_with_depth_tags(tmp_path, writer):
    uri, logger = sqlite_mlflow_logger(tmp_path, "depth-models")
    callback = DepthCallback(ClockMeter(), mlflow_writer=writer)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4,
                                  save_top_k=-1)
    trainer = pl.Trainer(callbacks=[callback, checkpoints], logger=logger, max_steps=12,
                         enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", devices=1, default_root_dir=tmp_path)
    trainer.fit(TinyLM(step_sleep_s=0.005), loader(n=200))
    client = MlflowClient(uri)
    steps = sorted(step for step, _ in callback.logged_models)
    assert steps == [4, 8, 12]
    files = {int(p.stem.split("step=")[1]): p for p in (tmp_path / "ckpt").glob("*.ckpt")}
    for step, model_id in callback.logged_models:
        model = client.get_logged_model(model_id)
        record = torch.load(files[step], weights_only=True)["depth"]
        assert model.source_run_id == logger.run_id
        assert model.tags["depth.step"] == str(step)
        assert {k: model.tags[k] for k in TAGS} == {k: depth_tags(record)[k] for k in TAGS}
        path = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{model.artifact_location}/{MODEL_ARTIFACT}",
            dst_path=str(tmp_path / f"model-{step}"))
        assert json.loads(Path(path).read_text()) == record
        assert {m.key for m in model.metrics} >= {"depth.train_joules", "depth.train_kwh"}
    latest = client.download_artifacts(logger.run_id, "depth/provenance.json", str(tmp_path))
    assert json.loads(Path(latest).read_text()) == torch.load(files[12], weights_only=True)["depth"]
    run = client.get_run(logger.run_id)
    assert run.data.tags["depth.optimizer_steps"] == "12"
    step12 = dict(callback.logged_models)[12]
    version = register_model(step12, "tiny-gpt", client=client)
    assert {k: version.tags[k] for k in TAGS} == {
        k: client.get_logged_model(step12).tags[k] for k in TAGS}


def test_without_an_mlflow_logger_the_callback_opens_its_own_run(tmp_path):
    import os

    from pytorch_lightning.loggers import CSVLogger

    callback = DepthCallback(ClockMeter(), experiment_name="own-run-test")
    trainer = pl.Trainer(callbacks=[callback], logger=CSVLogger(tmp_path), max_epochs=1,
                         enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", devices=1, default_root_dir=tmp_path)
    trainer.fit(TinyLM(), loader(n=20))
    assert callback.wait_for_tracking()  # its writer finishes the run after fit returns
    uri, run_id = callback.own_run
    assert uri == os.environ["MLFLOW_TRACKING_URI"]  # honoured
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert len(client.get_metric_history(run_id, "energy/joules")) == 5
    assert run.data.tags["depth.optimizer_steps"] == "5"
    assert [step for step, _ in callback.logged_models] == [5]


def test_default_store_is_sqlite_under_mlruns(tmp_path):
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    script = f"""
import sys; sys.path.insert(0, {str(root)!r})
import pytorch_lightning as pl
from depth import DepthCallback
from tests.doubles.meters import ClockMeter
from tests.support.lightning_models import TinyLM, loader, sqlite_mlflow_logger
cb = DepthCallback(ClockMeter())
pl.Trainer(callbacks=[cb], logger=False, max_epochs=1, enable_progress_bar=False,
           accelerator="cpu", devices=1).fit(TinyLM(), loader(n=8))
print(cb.own_run[0], cb.own_run[1])
"""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    uri, run_id = out.stdout.split()[-2:]
    assert uri == "sqlite:///mlruns/mlflow.db"
    assert (tmp_path / "mlruns" / "mlflow.db").is_file()
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    assert len(client.get_metric_history(run_id, "energy/joules")) == 2
    artifacts = client.get_run(run_id).info.artifact_uri
    assert str((tmp_path / "mlruns" / "artifacts").resolve()) in artifacts


def test_read_provenance_on_every_source_form(tmp_path):
    import subprocess
    import sys

    from depth import read_provenance

    uri, logger = sqlite_mlflow_logger(tmp_path, "read-forms")
    callback = DepthCallback(ClockMeter(), mlflow_writer="thread")
    trainer = pl.Trainer(callbacks=[callback], logger=logger, max_epochs=1,
                         enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", devices=1, default_root_dir=tmp_path)
    trainer.fit(TinyLM(), loader(n=24))
    path = trainer.checkpoint_callback.best_model_path
    expected = torch.load(path, weights_only=True)["depth"]
    (step, model_id), = callback.logged_models
    client = MlflowClient(uri)
    register_model(model_id, "forms", client=client)
    client.set_registered_model_alias("forms", "champion", "1")
    for source in (path, f"runs:/{logger.run_id}", "models:/forms/1", "models:/forms@champion",
                   model_id, f"models:/{model_id}"):
        assert read_provenance(source, tracking_uri=uri).to_dict() == as_record(expected), source
    out = subprocess.run([sys.executable, "-m", "depth.cli", "provenance", "models:/forms/1",
                          "--tracking-uri", uri, "--json"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0
    assert json.loads(out.stdout)["record_sha256"] == expected["record_sha256"]
    bad = subprocess.run([sys.executable, "-m", "depth.cli", "provenance", "runs:/nope",
                          "--tracking-uri", uri], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "Traceback" not in bad.stderr


def as_record(record: dict) -> dict:
    from depth import Provenance

    return Provenance.from_dict(record).to_dict()


def test_the_suite_leaves_the_repositorys_store_alone():
    """Guard for the fixtures above: no test run lands in ./mlruns of the checkout."""
    import os

    assert os.environ["MLFLOW_TRACKING_URI"].startswith("sqlite:///")
    assert "mlruns" not in os.environ["MLFLOW_TRACKING_URI"].split("/")[-2:]


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_log_checkpoints_uploads_each_file_to_its_logged_model(tmp_path, writer):
    uri, logger = sqlite_mlflow_logger(tmp_path, "depth-files")
    callback = DepthCallback(ClockMeter(), mlflow_writer=writer, log_checkpoints=True)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3,
                                  save_top_k=-1)
    trainer = pl.Trainer(callbacks=[callback, checkpoints], logger=logger, max_steps=9,
                         enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", devices=1, default_root_dir=tmp_path)
    trainer.fit(TinyLM(), loader(n=200))
    client = MlflowClient(uri)
    files = {int(p.stem.split("step=")[1]): p for p in (tmp_path / "ckpt").glob("*.ckpt")}
    assert sorted(step for step, _ in callback.logged_models) == sorted(files) == [3, 6, 9]
    for step, model_id in callback.logged_models:
        model = client.get_logged_model(model_id)
        assert model.tags["depth.checkpoint_file"] == files[step].name
        uploaded = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=f"{model.artifact_location}/checkpoint/{files[step].name}",
            dst_path=str(tmp_path / f"download-{step}")))
        assert uploaded.read_bytes() == files[step].read_bytes()
        record = torch.load(uploaded, weights_only=True)["depth"]
        assert record["record_sha256"] == model.tags["depth.record_sha256"]


def test_without_log_checkpoints_no_file_is_uploaded(tmp_path):
    uri, logger = sqlite_mlflow_logger(tmp_path, "depth-nofiles")
    callback = DepthCallback(ClockMeter(), mlflow_writer="thread")
    trainer = pl.Trainer(callbacks=[callback], logger=logger, max_steps=3,
                         enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", devices=1, default_root_dir=tmp_path)
    trainer.fit(TinyLM(), loader(n=40))
    (_, model_id), = callback.logged_models
    model = MlflowClient(uri).get_logged_model(model_id)
    assert "depth.checkpoint_file" not in model.tags
    assert [a.path for a in MlflowClient(uri).list_logged_model_artifacts(model_id)] == [
        MODEL_ARTIFACT]


def test_a_checkpoint_file_removed_before_its_upload_is_tagged_not_raised(sqlite_run, tmp_path):
    from depth.tracking.publish import publish_checkpoint, publish_checkpoint_file

    uri, client, run_id = sqlite_run
    record = {"train_joules": 1.0, "optimizer_steps": 1, "record_sha256": "ab" * 32}
    model_id = publish_checkpoint(client, run_id, record, step=1)
    gone = tmp_path / "step=1.ckpt"  # ModelCheckpoint(save_top_k=1) deleted it already
    reason = publish_checkpoint_file(client, run_id, str(gone), record["record_sha256"])
    assert reason == f"checkpoint file {gone} was gone before it could be uploaded"
    assert client.get_logged_model(model_id).tags["depth.checkpoint_file"] == "missing at upload"


def test_tags_keep_every_digit_of_a_number_numpy_or_not():
    # `depth attribute` adds the depth.train_joules tags back up: six digits lost joules,
    # and numpy's repr ("np.float64(...)") is no number
    import numpy as np

    joules = 23.212451399376732
    for value in (joules, np.float64(joules)):
        tags = depth_tags({"train_joules": value, "optimizer_steps": 3})
        assert tags["depth.train_joules"] == "23.212451399376732"
        assert float(tags["depth.train_kwh"]) == joules / 3.6e6
