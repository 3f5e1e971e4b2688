"""Provenance through a real MLflow tracking server on 127.0.0.1."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from mlflow import MlflowClient
from pytorch_lightning.loggers import MLFlowLogger

from depth import DepthCallback, read_provenance
from depth.mlflow_publish import depth_tags, register_model
from tests.doubles.meters import ClockMeter
from tests.lightning_models import TinyLM, loader
from tests.mlflow_server import mlflow_server


def test_provenance_round_trip_through_a_tracking_server(tmp_path):
    with mlflow_server(tmp_path / "server") as uri:
        logger = MLFlowLogger(experiment_name="remote", tracking_uri=uri)
        callback = DepthCallback(ClockMeter(), mlflow_writer="process")
        trainer = pl.Trainer(callbacks=[callback], logger=logger, max_epochs=1,
                             default_root_dir=tmp_path, enable_progress_bar=False,
                             enable_model_summary=False, accelerator="cpu", devices=1)
        trainer.fit(TinyLM(), loader(n=24))
        record = torch.load(trainer.checkpoint_callback.best_model_path,
                            weights_only=True)["depth"]
        (step, model_id), = callback.logged_models
        client = MlflowClient(uri)
        model = client.get_logged_model(model_id)
        for key, value in depth_tags(record).items():
            assert model.tags[key] == value
        assert len(client.get_metric_history(logger.run_id, "energy/joules")) == 6
        register_model(model_id, "remote-gpt", client=client)
        for source in (f"runs:/{logger.run_id}", model_id, "models:/remote-gpt/1"):
            assert read_provenance(source, tracking_uri=uri).record_sha256 == \
                record["record_sha256"]


def test_an_unreachable_server_is_detected_fast_and_never_stalls_training(tmp_path, monkeypatch):
    import time
    import warnings

    from tests.mlflow_server import free_port

    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead)
    callback = DepthCallback(ClockMeter())
    trainer = pl.Trainer(callbacks=[callback], logger=False, max_epochs=1,
                         default_root_dir=tmp_path, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1)
    t0 = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(TinyLM(), loader(n=24))
    assert time.monotonic() - t0 < 30  # MLflow's own retries would take minutes
    assert sum(dead in str(w.message) for w in caught) == 1
    assert callback.own_run is None
    record = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=True)["depth"]
    assert record["optimizer_steps"] == 6  # the checkpoint's record is always written
