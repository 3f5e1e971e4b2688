"""The run depth opens itself is created, written and ended by its writer process, which
finishes after ``fit`` returns (issue 12, point 5: the fixed cost of a fit).

Each fit runs in a fresh process, as a user's script does: the training process never
imports MLflow, exits at once, and the writer still stores everything; a writer killed
after ``fit`` leaves what it had in the spool, and `depth sync` stores it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from tests.tracking.test_remote import sync_cli

SCRIPT = Path(__file__).resolve().parents[1] / "support" / "fit_own_run.py"


def fit_in_fresh_process(tmp_path: Path, *extra: str) -> tuple[dict, str]:
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    (tmp_path / "store").mkdir()
    done = subprocess.run([sys.executable, str(SCRIPT), "--dir", str(tmp_path), *extra],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "MLFLOW_TRACKING_URI": uri})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), uri


def wait_for_exit(pid: int, timeout_s: float = 240.0) -> None:
    deadline = time.monotonic() + timeout_s
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        status = Path(f"/proc/{pid}/stat").read_text().split()[2] if Path(
            f"/proc/{pid}/stat").exists() else "X"
        if status == "Z":  # exited; its parent (gone) left it to init
            break
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()


def the_run(uri: str):
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("background")
    (run,) = client.search_runs([experiment.experiment_id])
    return client, run


def assert_everything_stored_once(tmp_path: Path, uri: str, steps: int = 6) -> None:
    client, run = the_run(uri)
    assert run.info.status == "FINISHED"
    joules = client.get_metric_history(run.info.run_id, "energy/joules")
    assert sorted(m.step for m in joules) == list(range(1, steps + 1))  # each once
    records = {torch.load(path, weights_only=True)["depth"]["record_sha256"]
               for path in (tmp_path / "ckpt").glob("*.ckpt")}
    models = client.search_logged_models([run.info.experiment_id])
    assert sorted(m.tags["depth.record_sha256"] for m in models) == sorted(records)
    assert all(m.source_run_id == run.info.run_id for m in models)


def test_a_fit_never_imports_mlflow_and_its_writer_finishes_after_the_process(tmp_path):
    out, uri = fit_in_fresh_process(tmp_path)
    assert out["mlflow_imported"] is False
    wait_for_exit(out["writer_pid"])  # it outlived the training process, which has exited
    assert_everything_stored_once(tmp_path, uri)
    assert not Path(out["spool"]).exists()  # all stored: nothing left to replay


def test_a_writer_killed_after_fit_leaves_its_points_to_depth_sync(tmp_path, monkeypatch):
    out, uri = fit_in_fresh_process(tmp_path, "--kill-writer")
    assert out["mlflow_imported"] is False
    wait_for_exit(out["writer_pid"])
    spooled = list(Path(out["spool"]).glob("*.jsonl"))
    assert spooled and any('"points"' in f.read_text() for f in spooled)
    assert any('"end"' in f.read_text() for f in spooled)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    sync_cli(out["spool"])
    sync_cli(out["spool"])  # twice: still nothing twice
    assert_everything_stored_once(tmp_path, uri)
