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
from pytorch_lightning.loggers import MLFlowLogger

from depth import DepthCallback
from depth.mlflow_publish import MODEL_ARTIFACT, depth_tags, register_model
from tests.doubles.meters import ClockMeter
from tests.lightning_models import TinyLM, loader

TAGS = ("depth.train_joules", "depth.train_kwh", "depth.optimizer_steps",
        "depth.train_tokens", "depth.method", "depth.weights_sha256")


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_every_checkpoint_becomes_a_logged_model_with_depth_tags(tmp_path, writer):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    logger = MLFlowLogger(experiment_name="depth-models", tracking_uri=uri,
                          artifact_location=str(tmp_path / "artifacts"))
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
