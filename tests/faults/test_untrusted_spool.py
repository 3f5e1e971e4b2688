"""`depth sync` treats a spool file as untrusted input: it contacts only the store the user
names, uploads only the checkpoint a record claims, sets malformed events aside, and lets
one sync at a time replay a folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint

from depth import DepthCallback
from depth.tracking.spool import Spool, sync_spool
from tests.doubles.meters import ClockMeter
from tests.support.lightning_models import TinyLM, loader

REPO = Path(__file__).resolve().parents[2]


def depth_sync(*args: str, env: dict[str, str] | None = None,
               timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "depth.cli", "sync", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, **(env or {})})


class Recorder(BaseHTTPRequestHandler):
    """Answers every request with 200 and keeps (method, path, Authorization header)."""

    seen: list[tuple[str, str, str | None]] = []

    def _answer(self) -> None:
        self.seen.append((self.command, self.path, self.headers.get("Authorization")))
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        body = b"{}"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def listener():
    """A local HTTP server that records any request: where a planted spool points."""
    Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", Recorder.seen
    server.shutdown()
    server.server_close()


def test_a_planted_spool_naming_another_server_is_never_contacted(tmp_path, sqlite_run,
                                                                   listener):
    uri, client, run_id = sqlite_run
    elsewhere, seen = listener
    spool = Spool(tmp_path / "spool", elsewhere, run_id)
    spool.add_points([["energy/joules", 1.0, 1_000, 1]])
    secrets = {"MLFLOW_TRACKING_URI": uri, "MLFLOW_TRACKING_USERNAME": "alice",
               "MLFLOW_TRACKING_PASSWORD": "hunter2-secret"}
    for extra in ([], ["--tracking-uri", uri]):  # the user's store, named either way
        done = depth_sync(str(tmp_path / "spool"), *extra, env=secrets)
        assert done.returncode == 2, done.stderr
        refusals = [line for line in done.stderr.splitlines() if "recorded for" in line]
        assert len(refusals) == 1 and elsewhere in refusals[0] and "Traceback" not in done.stderr
        assert f"--tracking-uri {elsewhere}" in refusals[0]  # how to replay it there
    assert seen == []  # the planted server never heard from us, credentials or not
    assert client.get_metric_history(run_id, "energy/joules") == []
    assert not spool.path.with_name(spool.path.name + ".done").exists()


def test_a_spool_is_replayed_into_the_store_it_names_when_the_user_names_it(tmp_path,
                                                                           sqlite_run):
    uri, client, run_id = sqlite_run
    spool = Spool(tmp_path / "spool", uri, run_id)
    spool.add_points([["energy/joules", 2.0, 1_000, 2]])
    refused = sync_spool(tmp_path / "spool")  # MLFLOW_TRACKING_URI is the session store
    assert refused.files == 0 and len(refused.refused) == 1
    report = sync_spool(tmp_path / "spool", tracking_uri=uri)
    assert report.replayed == 1 and not report.refused
    assert [m.step for m in client.get_metric_history(run_id, "energy/joules")] == [2]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> list[Path]:
    """Two real checkpoints (steps 1 and 2) with their depth records."""
    root = tmp_path_factory.mktemp("ckpts")
    saver = ModelCheckpoint(dirpath=root, every_n_train_steps=1, save_top_k=-1)
    trainer = pl.Trainer(callbacks=[DepthCallback(ClockMeter(), tracking=False), saver],
                         logger=False, max_steps=2, default_root_dir=root,
                         enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", devices=1)
    trainer.fit(TinyLM(), loader(n=16))
    return sorted(root.glob("*.ckpt"), key=lambda p: p.stat().st_mtime)


def test_only_the_checkpoint_of_the_record_an_event_claims_is_uploaded(tmp_path, sqlite_run,
                                                                      checkpoints):
    import torch

    uri, client, run_id = sqlite_run
    first, second = checkpoints
    record = torch.load(first, weights_only=True)["depth"]
    digest = record["record_sha256"]
    secret = tmp_path / "id_rsa"
    secret.write_text("-----BEGIN PRIVATE KEY----- not for MLflow")
    spool = Spool(tmp_path / "spool", uri, run_id)
    spool.add_checkpoints([{"record": record, "step": 1}])
    for path in (secret, second, first):  # any file; another record's checkpoint; its own
        spool.add_checkpoints([{"file": str(path), "record_sha256": digest, "step": 1}])
    report = sync_spool(tmp_path / "spool", tracking_uri=uri)
    (model,) = client.search_logged_models([client.get_run(run_id).info.experiment_id])
    uploaded = [a.path for a in client.list_logged_model_artifacts(model.model_id, "checkpoint")]
    assert uploaded == [f"checkpoint/{first.name}"]
    notes = [w for w in report.warnings if "not uploaded" in w]
    assert len(notes) == 2 and all("\n" not in w for w in notes)
    assert str(secret) in notes[0] and str(second) in notes[1]


def test_malformed_events_are_set_aside_and_the_rest_of_the_folder_is_replayed(tmp_path,
                                                                              sqlite_run):
    uri, client, run_id = sqlite_run
    spool = Spool(tmp_path / "spool", uri, run_id)
    spool.add_points([["energy/joules", 1.0, 1_000, 1]])
    with open(spool.path, "a") as f:
        f.write("{not json\n")
        f.write(json.dumps({"id": "a", "points": [["energy/joules", "one", 1, 1]]}) + "\n")
        f.write(json.dumps({"id": "b", "checkpoint": {"file": 7, "step": 1}}) + "\n")
        f.write(json.dumps({"id": "c", "end": "EXPLODED"}) + "\n")
        f.write(json.dumps({"id": "d", "points": [["../escape", 1.0, 1, 1]]}) + "\n")  # server
    spool.add_points([["energy/joules", 3.0, 3_000, 3]])
    (tmp_path / "spool" / "0-stray.jsonl").write_text("hello\n")  # sorts first
    report = sync_spool(tmp_path / "spool", tracking_uri=uri)
    assert [m.step for m in client.get_metric_history(run_id, "energy/joules")] == [1, 3]
    assert report.replayed == 2 and report.set_aside == 5
    set_aside = [w for w in report.warnings if "set aside" in w]
    assert len(set_aside) == 5 and all("\n" not in w for w in set_aside)
    assert any("line 3 is not JSON" in w for w in set_aside)
    assert any("INVALID_PARAMETER_VALUE" in w or "escape" in w for w in set_aside)
    assert len(report.refused) == 1 and "0-stray.jsonl" in report.refused[0]
    again = sync_spool(tmp_path / "spool", tracking_uri=uri)  # nothing left, nothing new
    assert again.replayed == 0 and again.set_aside == 0 and again.skipped == 7


def test_non_energy_values_and_unsealed_records_are_set_aside(tmp_path, sqlite_run):
    """A new user planted NaN, -inf and -5 J points and a record of 1e999 J (no schema, no
    digest): sync stored them all, and made a LoggedModel of the record."""
    uri, client, run_id = sqlite_run
    spool = Spool(tmp_path / "spool", uri, run_id)
    spool.add_points([["energy/joules", 1.0, 1_000, 1]])
    with open(spool.path, "a") as f:
        for i, value in enumerate([float("nan"), float("-inf"), -5.0]):
            f.write(json.dumps({"id": f"p{i}", "points": [["energy/joules", value, 2, 2]]}))
            f.write("\n")
        f.write(json.dumps({"id": "r", "checkpoint": {"record": {"train_joules": 1e999},
                                                      "step": 2}}) + "\n")
    report = sync_spool(tmp_path / "spool", tracking_uri=uri)
    assert [m.value for m in client.get_metric_history(run_id, "energy/joules")] == [1.0]
    assert report.replayed == 1 and report.set_aside == 4
    assert not client.search_logged_models(experiment_ids=[
        client.get_run(run_id).info.experiment_id])


def _offline_spool(tmp_path: Path, uri: str) -> Path:
    spool = Spool(tmp_path / "spool", uri, None, experiment_name="offline")
    spool.add_points([["energy/joules", float(s), 1_000 + s, s] for s in range(1, 4)])
    spool.end("FINISHED")
    return tmp_path / "spool"


def test_a_folder_being_synced_is_not_synced_again_at_the_same_time(tmp_path, sqlite_run):
    import fcntl

    uri, client, _ = sqlite_run
    folder = _offline_spool(tmp_path, uri)
    with open(folder / ".depth-sync.lock", "a+") as held:  # as a running `depth sync` holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242")
        held.flush()
        done = depth_sync(str(folder), "--tracking-uri", uri)
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0 and "already being synced" in done.stderr
    assert "pid 4242" in done.stderr
    assert client.get_experiment_by_name("offline") is None  # nothing replayed
    assert depth_sync(str(folder), "--tracking-uri", uri).returncode == 0  # released: works


def test_three_concurrent_syncs_create_the_run_once(tmp_path, sqlite_run):
    uri, client, _ = sqlite_run
    folder = _offline_spool(tmp_path, uri)
    procs = [subprocess.Popen([sys.executable, "-m", "depth.cli", "sync", str(folder),
                               "--tracking-uri", uri], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=REPO) for _ in range(3)]
    results = [(p.wait(timeout=180), p.stderr.read()) for p in procs]
    for status, err in results:
        assert status == 0 or (status == 1 and "already being synced" in err), err
    experiment = client.get_experiment_by_name("offline")
    (run,) = client.search_runs([experiment.experiment_id])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "energy/joules")] \
        == [1, 2, 3]
    assert run.info.status == "FINISHED"
