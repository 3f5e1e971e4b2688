"""Concurrent fits against one authenticated, PostgreSQL-backed MLflow server (the
session's, tests/support/postgres.py), killed and restarted while they train: every point
and every LoggedModel ends up there exactly once, directly or through `depth sync`.
(The timed version, 8 fits, is scripts/bench_tracking_load.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient

from depth.cli import main
from tests.support.postgres import ADMIN, ADMIN_PASSWORD, ALICE, ALICE_PASSWORD

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
FITS, STEPS, EVERY = 3, 40, 10


def test_concurrent_fits_through_a_restart_store_everything_exactly_once(team_server,
                                                                         tmp_path):
    server = team_server
    experiment = f"load-{uuid.uuid4().hex[:6]}"  # new: the fits race to create it
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO),
           "MLFLOW_TRACKING_URI": server.as_user(ALICE, ALICE_PASSWORD)}
    dirs = [tmp_path / f"fit{i}" for i in range(FITS)]
    procs = []
    for d in dirs:
        d.mkdir()
        procs.append(subprocess.Popen(
            [sys.executable, str(REPO / "tests/support/team_fit.py"), "--dir", str(d),
             "--steps", str(STEPS), "--sleep", "0.1", "--every-n-steps", str(EVERY),
             "--experiment", experiment, "--go", str(go)],
            env=env, stdout=subprocess.DEVNULL, stderr=open(d / "stderr.log", "w")))
    try:
        deadline = time.monotonic() + 300
        while not all((d / "ready").exists() for d in dirs):  # imports done: start together
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
            time.sleep(0.1)
        go.touch()
        while not all((d / "ckpt").is_dir() and any((d / "ckpt").glob("*.ckpt"))
                      for d in dirs):  # each has stored a checkpoint: kill the server
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
            time.sleep(0.05)
        server.stop()
        for d, p in zip(dirs, procs):
            assert p.wait(timeout=300) == 0, (d / "stderr.log").read_text()[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        if server.proc is None:
            server.start()
    assert any((d / "depth-spool").exists() for d in dirs)  # the outage was hit
    for d in dirs:
        if (d / "depth-spool").exists():
            assert main(["sync", str(d / "depth-spool"),
                         "--tracking-uri", server.as_user(ALICE, ALICE_PASSWORD)]) == 0
    admin = MlflowClient(server.as_user(ADMIN, ADMIN_PASSWORD))
    experiment_id = admin.get_experiment_by_name(experiment).experiment_id
    runs = admin.search_runs([experiment_id])
    assert len(runs) == FITS
    models = admin.search_logged_models([experiment_id])
    for run in runs:
        steps = [m.step for m in admin.get_metric_history(run.info.run_id, "energy/joules")]
        assert sorted(steps) == list(range(1, STEPS + 1))  # every point, once
        mine = [int(m.tags["depth.step"]) for m in models
                if m.source_run_id == run.info.run_id]
        assert sorted(mine) == list(range(EVERY, STEPS + 1, EVERY))  # every model, once
        assert run.info.status == "FINISHED"
