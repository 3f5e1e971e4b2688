"""`depth report` keeps one report run per experiment (issue 15 point 3), and the commands
that read from MLflow print no "Downloading artifacts" bars (point 7). A real tiny-recipe
fit on its own SQLite store; the CLI run for real, in a process of its own where stderr
is what a user sees."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from depth.cli import main
from tests.support.tiny_recipe import train_tiny_recipe

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_tiny_recipe(tmp_path_factory.mktemp("report-run"), "report-run")


def test_two_reports_update_one_report_run(trained, tmp_path, capsys):
    uri, _ = trained
    for _ in range(2):
        status = main(["report", "--experiment", "report-run", "--out", str(tmp_path),
                       "--tracking-uri", uri])
        assert status == 0, capsys.readouterr().err
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("report-run").experiment_id
    runs = client.search_runs([experiment], filter_string="tags.`depth.report` = 'true'")
    assert len(runs) == 1
    run_id = runs[0].info.run_id
    assert f"logged to run {run_id}" in capsys.readouterr().out
    names = sorted(a.path for a in client.list_artifacts(run_id, "depth-report"))
    assert names == sorted(f"depth-report/{n}" for n in (
        "cumulative_joules.png", "tokens_per_wh_by_batch.png", "amortization.png",
        "models.csv", "search.json"))
    history = client.get_metric_history(run_id, "report/models")
    assert [m.step for m in history] == [0, 1] and history[-1].value == 1.0
    assert runs[0].data.metrics["report/kept_depth_joules"] > 0


@pytest.mark.parametrize("command", ["provenance", "amortize", "report"])
def test_reading_commands_print_no_download_bars(trained, tmp_path, command):
    uri, ckpt = trained
    client = MlflowClient(uri)
    run_id = client.search_runs(
        [client.get_experiment_by_name("report-run").experiment_id],
        filter_string="attributes.run_name != 'depth-report'")[0].info.run_id
    argv = {"provenance": ["provenance", f"runs:/{run_id}"],
            "amortize": ["amortize", f"runs:/{run_id}", "--served-tokens", "1000",
                         "--joules-per-token", "0.5"],
            "report": ["report", "--experiment", "report-run", "--out", str(tmp_path),
                       "--no-log"]}[command]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)  # MLflow's default: bars on
    done = subprocess.run([sys.executable, "-m", "depth.cli", *argv, "--tracking-uri", uri],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Downloading artifacts" not in done.stderr
    assert "it/s]" not in done.stderr
