"""`depth train` and `depth run` end to end: a real (small) GPT, real data, real MLflow."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from mlflow import MlflowClient

from depth.cli import main

SMALL = ["--model.n_layer", "1", "--model.n_head", "2", "--model.n_embd", "32",
         "--model.block_size", "32", "--train.batch_size", "4", "--train.val_batches", "2",
         "--train.val_every_n_steps", "3", "--train.progress_bar", "false",
         "--data.stdlib_glob", "json/*.py", "--data.val_fraction", "0.2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, _session_store):
    """tiny-cpu shrunk to seconds, then fine-tuned from its last checkpoint."""
    root = tmp_path_factory.mktemp("train")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        cache = ["--data.cache_dir", str(root / "hf")]
        assert main(["train", "tiny-cpu", *SMALL, *cache, "--train.max_steps", "7"]) == 0
        parent = root / "runs/tiny-cpu/checkpoints/step=7.ckpt"
        assert main(["train", "finetune-tiny", *SMALL, *cache, "--train.max_steps", "4",
                     "--init_from", str(parent)]) == 0
    finally:
        os.chdir(cwd)
    return root


def test_train_writes_checkpoints_with_records_and_mlflow_models(trained, _session_store):
    final = torch.load(trained / "runs/tiny-cpu/checkpoints/step=7.ckpt", weights_only=True)
    record = final["depth"]
    assert record["optimizer_steps"] == 7 and record["train_joules"] > 0
    assert record["train_tokens"] == 7 * 4 * 32  # B x T tokens per step, inferred
    assert record["uncertainty"]["relative"] == 0.5  # the estimate's assumed bound
    assert record["uncertainty"]["joules"] == pytest.approx(0.5 * record["train_joules"])
    assert record["parameters"] == sum(v.numel() for k, v in final["state_dict"].items()
                                       if k != "gpt.lm_head.weight")  # tied: counted once
    client = MlflowClient(_session_store)
    experiment = client.get_experiment_by_name("depth")
    run = client.search_runs([experiment.experiment_id],
                             filter_string="tags.mlflow.runName = 'tiny-cpu'")[0]
    joules = client.get_metric_history(run.info.run_id, "energy/joules")
    assert sorted(m.step for m in joules) == list(range(1, 8))
    models = [m for m in client.search_logged_models([experiment.experiment_id])
              if m.source_run_id == run.info.run_id]
    assert sorted(int(m.tags["depth.step"]) for m in models) == [3, 6, 7]
    last = next(m for m in models if m.tags["depth.step"] == "7")
    assert last.tags["depth.record_sha256"] == record["record_sha256"]


def test_finetune_records_its_parent(trained):
    parent = torch.load(trained / "runs/tiny-cpu/checkpoints/step=7.ckpt",
                        weights_only=True)["depth"]
    child = torch.load(trained / "runs/finetune-tiny/checkpoints/step=4.ckpt",
                       weights_only=True)["depth"]
    assert child["parent"]["record_sha256"] == parent["record_sha256"]
    assert child["depth_joules"] == pytest.approx(child["train_joules"] + parent["train_joules"])


def test_depth_run_is_the_main_job_and_prints_the_summary(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "depth.cli", "run", *SMALL, "--train.max_steps", "3",
         "--data.cache_dir", str(tmp_path / "hf")],
        capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    for line in ("training energy", "joules per parameter", "training tokens per Wh",
                 "inference tokens per Wh", "break-even", "amortized over 1M", "method",
                 "mlflow ui --backend-store-uri sqlite:///"):
        assert line in out, out
    assert "tiny-cpu" in done.stderr  # no GPU here: the CPU recipe
