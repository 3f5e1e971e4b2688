"""Credentials in a tracking URI (``http://user:password@host``): the server is reached with
them, the password lands nowhere, reads from a server that is down fail within seconds in
one redacted line, and `depth train` uses the recipe's URI, not the shell's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from mlflow import MlflowClient

from depth import DepthCallback
from depth.tracking.sources import checkpoint_of, read_provenance
from tests.doubles.meters import ClockMeter
from tests.support.lightning_models import TinyLM, loader
from tests.support.mlflow_server import MlflowServer, free_port, mlflow_server

PASSWORD = "pw-7f3a-SECRET"
SMALL = ["--model.n_layer", "1", "--model.n_head", "2", "--model.n_embd", "32",
         "--model.block_size", "32", "--train.batch_size", "4", "--train.val_batches", "2",
         "--train.val_every_n_steps", "2", "--train.progress_bar", "false",
         "--data.stdlib_glob", "json/*.py", "--data.val_fraction", "0.2",
         "--train.max_steps", "3"]
REPO = Path(__file__).resolve().parents[2]


def with_password(uri: str) -> str:
    return uri.replace("http://", f"http://alice:{PASSWORD}@")


def depth_cli(*args: str, cwd: Path, env: dict[str, str] | None = None,
              timeout: float = 400) -> subprocess.CompletedProcess:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "depth.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": path, **(env or {})})


def files_holding(text: str, *roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob("*")
            if p.is_file() and text.encode() in p.read_bytes()]


def test_a_uri_with_credentials_reaches_the_server_and_the_password_lands_nowhere(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    with mlflow_server(tmp_path / "server") as uri:
        done = depth_cli("train", "tiny-cpu", *SMALL, "--data.cache_dir", str(tmp_path / "hf"),
                         "--tracking.tracking_uri", with_password(uri),
                         "--depth.log_checkpoints", "true", cwd=work)
        assert done.returncode == 0, done.stderr[-3000:]
        assert PASSWORD not in done.stdout + done.stderr
        assert not (work / "runs/tiny-cpu/depth-spool").exists()  # reached, nothing spooled
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("depth").experiment_id
        (run,) = client.search_runs([experiment])
        joules = client.get_metric_history(run.info.run_id, "energy/joules")
        assert sorted(m.step for m in joules) == [1, 2, 3]
        models = client.search_logged_models([experiment])
        assert models and all(m.tags.get("depth.checkpoint_file") for m in models)
        stored = json.dumps([run.data.params, run.data.tags, [m.tags for m in models]])
        assert PASSWORD not in stored
        assert run.data.params["recipe/tracking/tracking_uri"].startswith("http://***@")
    checkpoint = torch.load(work / "runs/tiny-cpu/checkpoints/step=3.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["recipe"]["tracking"]["tracking_uri"] == \
        f"http://***@{uri.removeprefix('http://')}"
    # every file training wrote (checkpoints, sidecar) and the server stored (its database,
    # run and model artifacts, uploaded checkpoints)
    assert files_holding(PASSWORD, work, tmp_path / "server") == []


def test_depth_train_uses_the_recipe_uri_and_its_spool_replays_there_later(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    shell_store = f"sqlite:///{tmp_path}/shell.db"
    server = MlflowServer(tmp_path / "server")  # not started: the recipe's server is down
    recipe_uri = with_password(server.uri)
    done = depth_cli("train", "tiny-cpu", *SMALL, "--data.cache_dir", str(tmp_path / "hf"),
                     "--tracking.tracking_uri", recipe_uri, cwd=work,
                     env={"MLFLOW_TRACKING_URI": shell_store})
    assert done.returncode == 0, done.stderr[-3000:]
    assert PASSWORD not in done.stdout + done.stderr
    assert MlflowClient(shell_store).search_experiments(filter_string="name = 'depth'") == []
    (spooled,) = (work / "runs/tiny-cpu/depth-spool").glob("*.jsonl")
    header = json.loads(spooled.read_text().splitlines()[0])
    assert header["tracking_uri"] == f"http://***@{server.uri.removeprefix('http://')}"
    assert files_holding(PASSWORD, work) == []
    try:
        server.start()
        synced = depth_cli("sync", str(spooled.parent), "--tracking-uri", recipe_uri, cwd=work)
        assert synced.returncode == 0, synced.stderr
        assert PASSWORD not in synced.stdout + synced.stderr
        client = MlflowClient(server.uri)
        (run,) = client.search_runs([client.get_experiment_by_name("depth").experiment_id])
        joules = client.get_metric_history(run.info.run_id, "energy/joules")
        assert sorted(m.step for m in joules) == [1, 2, 3]
    finally:
        server.stop()


@pytest.fixture()
def down_uri() -> str:
    """A tracking URI with credentials whose port nothing listens on."""
    return with_password(f"http://127.0.0.1:{free_port()}")


def one_redacted_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert PASSWORD not in lines[0] and "Traceback" not in lines[0]
    assert "***@127.0.0.1" in lines[0] and "unreachable" in lines[0]
    return lines[0]


@pytest.mark.parametrize("command", [
    ["provenance", "runs:/0123abc"], ["card", "m-0123abc"], ["eval", "m-0123abc"],
    ["amortize", "m-0123abc", "--served-tokens", "1000"],
    ["report", "--experiment", "depth", "--out", "report"]])
def test_reads_from_a_server_that_is_down_fail_in_one_redacted_line(tmp_path, down_uri,
                                                                     command):
    done = depth_cli(*command, "--tracking-uri", down_uri, cwd=tmp_path,
                     timeout=120)  # MLflow's own retries: about 4 minutes
    assert done.returncode == 2
    assert one_redacted_line(done.stderr).startswith(f"depth {command[0]}: ")


def test_read_functions_give_up_within_seconds(down_uri, monkeypatch, tmp_path):
    from depth.serving.report import make_report

    reads = [lambda: read_provenance("runs:/0123abc", tracking_uri=down_uri),
             lambda: checkpoint_of("m-0123abc", tracking_uri=down_uri),
             lambda: make_report("depth", down_uri, tmp_path / "report")]
    for read in reads:
        t0 = time.monotonic()
        with pytest.raises(ValueError) as caught:
            read()
        assert time.monotonic() - t0 < 5
        one_redacted_line(str(caught.value))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", down_uri)  # parent= reads the default store
    trainer = pl.Trainer(callbacks=[DepthCallback(ClockMeter(), parent="runs:/0123abc",
                                                  tracking=False)],
                         logger=False, max_steps=1, default_root_dir=tmp_path,
                         enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", devices=1)
    t0 = time.monotonic()
    with pytest.raises(ValueError) as caught:
        trainer.fit(TinyLM(), loader(n=8))
    assert time.monotonic() - t0 < 10
    one_redacted_line(str(caught.value))
