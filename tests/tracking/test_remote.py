"""Provenance through a real MLflow tracking server on 127.0.0.1."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from mlflow import MlflowClient
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import MLFlowLogger

from depth import DepthCallback, read_provenance
from depth.tracking.publish import depth_tags, register_model
from tests.doubles.meters import ClockMeter
from tests.support.lightning_models import TinyLM, loader
from tests.support.mlflow_server import MlflowServer, mlflow_server


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


def sync_cli(spool, *extra):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "depth.cli", "sync", str(spool), *extra],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_an_unreachable_server_is_detected_fast_and_never_stalls_training(tmp_path, monkeypatch):
    import time
    import warnings

    server = MlflowServer(tmp_path / "server")  # its port is free: nothing listens yet
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    callback = DepthCallback(ClockMeter(), experiment_name="offline-fit")
    trainer = pl.Trainer(callbacks=[callback], logger=False, max_epochs=1,
                         default_root_dir=tmp_path, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1)
    t0 = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(TinyLM(), loader(n=24))
    assert time.monotonic() - t0 < 30  # MLflow's own retries would take minutes
    assert sum(server.uri in str(w.message) for w in caught) == 1
    assert callback.own_run is None
    record = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=True)["depth"]
    assert record["optimizer_steps"] == 6  # the checkpoint's record is always written
    assert list((tmp_path / "depth-spool").glob("*.jsonl"))
    try:  # the server comes up later; `depth sync` creates the run and fills it
        server.start()
        assert "events replayed" in sync_cli(tmp_path / "depth-spool")
        client = MlflowClient(server.uri)
        (run,) = client.search_runs([client.get_experiment_by_name("offline-fit").experiment_id])
        assert run.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "energy/joules")] \
            == list(range(1, 7))
        assert run.data.tags["depth.record_sha256"] == record["record_sha256"]
    finally:
        server.stop()


class Outage(pl.Callback):
    """Kills the tracking server after `down_at` optimizer steps and starts it again at
    `up_at`; steps take `step_s`. Records how long each step took and, apart, how long the
    test spent stopping and starting the server."""

    def __init__(self, server, down_at: int, up_at: int, step_s: float):
        self.server, self.down_at, self.up_at, self.step_s = server, down_at, up_at, step_s
        self.step_times: list[float] = []
        self.server_s = 0.0
        self._last = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        import time

        now = time.monotonic()
        if self._last is not None:
            self.step_times.append(now - self._last)
        time.sleep(self.step_s)
        t0 = time.monotonic()
        if trainer.global_step == self.down_at:
            self.server.stop()
        if trainer.global_step == self.up_at:
            self.server.start()
        self.server_s += time.monotonic() - t0
        self._last = time.monotonic()


def test_a_server_killed_mid_run_loses_nothing_after_depth_sync(tmp_path, monkeypatch):
    import time
    import warnings

    server = MlflowServer(tmp_path / "server")
    server.start()
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
        callback = DepthCallback(ClockMeter(), experiment_name="outage", flush_interval_s=0.1,
                                 tracking_retry_s=0.5)
        outage = Outage(server, down_at=8, up_at=20, step_s=0.25)
        checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=5,
                                      save_top_k=-1)
        trainer = pl.Trainer(callbacks=[callback, outage, checkpoints], logger=False,
                             max_steps=28, default_root_dir=tmp_path,
                             enable_progress_bar=False, enable_model_summary=False,
                             accelerator="cpu", devices=1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t0 = time.monotonic()
            trainer.fit(TinyLM(), loader(n=400))
            rest_s = time.monotonic() - t0 - sum(outage.step_times) - outage.server_s
        assert max(outage.step_times) < 3.0  # the outage never stalled a step
        assert rest_s < 30  # nor set-up and the end of training (MLflow's retries: minutes)
        assert sum(server.uri in str(w.message) for w in caught) == 1
        assert callback.wait_for_tracking()  # its writer finishes after fit returns
        uri, run_id = callback.own_run
        client = MlflowClient(uri)
        before = {m.step for m in client.get_metric_history(run_id, "energy/joules")}
        assert len(before) < 28  # the outage left a gap ...
        spooled = list((tmp_path / "depth-spool").glob("*.jsonl"))
        assert spooled  # ... that is in the spool, with the checkpoints at steps 10 and 15
        assert sum(f.read_text().count('"checkpoint"') for f in spooled) >= 2
        sync_cli(tmp_path / "depth-spool")
        sync_cli(tmp_path / "depth-spool")  # twice: still nothing twice
        joules = client.get_metric_history(run_id, "energy/joules")
        assert sorted(m.step for m in joules) == list(range(1, 29))
        files = sorted((tmp_path / "ckpt").glob("*.ckpt"))
        records = {torch.load(f, weights_only=True)["depth"]["record_sha256"] for f in files}
        experiment = client.get_run(run_id).info.experiment_id
        models = client.search_logged_models([experiment])
        assert sorted(m.tags["depth.record_sha256"] for m in models) == sorted(records)
        assert client.get_run(run_id).info.status == "FINISHED"
    finally:
        server.stop()


def test_records_and_checkpoint_files_go_to_an_s3_compatible_artifact_store(tmp_path):
    """The server proxies artifacts to ``s3://`` (docs/deploy.md): the trainer needs no
    storage keys, and the bucket gets the run's record and the uploaded checkpoints."""
    import pytest

    from tests.support import s3_server

    if (why := s3_server.missing()) is not None:
        pytest.skip(why)
    with s3_server.s3_server(tmp_path / "s3", "team-artifacts") as s3_env:
        server = MlflowServer(tmp_path / "server", artifacts="s3://team-artifacts/mlflow")
        server.env = s3_env  # the server's environment only: the trainer has no keys
        uri = server.start()
        try:
            logger = MLFlowLogger(experiment_name="s3", tracking_uri=uri)
            callback = DepthCallback(ClockMeter(), mlflow_writer="process",
                                     log_checkpoints=True)
            trainer = pl.Trainer(callbacks=[callback], logger=logger, max_epochs=1,
                                 default_root_dir=tmp_path / "fit", enable_progress_bar=False,
                                 enable_model_summary=False, accelerator="cpu", devices=1)
            trainer.fit(TinyLM(), loader(n=24))
            callback.wait_for_tracking()
            record = torch.load(trainer.checkpoint_callback.best_model_path,
                                weights_only=True)["depth"]
            keys = [o["Key"] for o in s3_server.client(s3_env).list_objects_v2(
                Bucket="team-artifacts", Prefix="mlflow/").get("Contents", [])]
            assert any(k.endswith("/depth/provenance.json") for k in keys), keys
            assert any("/checkpoint/" in k and k.endswith(".ckpt") for k in keys), keys
            (_, model_id), = callback.logged_models
            for source in (f"runs:/{logger.run_id}", model_id):  # read back through the proxy
                assert read_provenance(source, tracking_uri=uri).record_sha256 == \
                    record["record_sha256"]
        finally:
            server.stop()
    secret = s3_server.SECRET_ACCESS_KEY.encode()
    for path in (tmp_path / "fit").rglob("*"):
        assert not path.is_file() or secret not in path.read_bytes(), path
    assert secret not in (tmp_path / "server" / "server.db").read_bytes()
