"""`depth eval`, `depth amortize` and `depth report` on two small trained models, with the
real (estimate) meter, a real SQLite MLflow store and real PNGs."""

from __future__ import annotations

import json

import pytest
import torch
from mlflow import MlflowClient

from depth.cli import main
from depth.gpt.recipe import load_recipe
from depth.gpt.train import train

SMALL = ["--model.n_layer", "1", "--model.n_head", "2", "--model.n_embd", "32",
         "--model.block_size", "48", "--train.batch_size", "4", "--train.val_batches", "2",
         "--train.val_every_n_steps", "4", "--train.progress_bar", "false",
         "--data.stdlib_glob", "json/*.py", "--data.val_fraction", "0.2",
         "--tracking.experiment_name", "compare"]
FAST_EVAL = ["--batch-sizes", "1,2", "--prompt-tokens", "8", "--new-tokens", "8",
             "--repeats", "3", "--min-window-s", "0.05", "--idle-s", "0.2",
             "--loss-batches", "2"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    uri = f"sqlite:///{root}/mlflow.db"
    out = {}
    for name, steps, extra in (("small-a", 4, []),
                               ("small-b", 8, ["--depth.log_checkpoints", "true"])):
        recipe = load_recipe("tiny-cpu", [*SMALL, "--train.max_steps", str(steps),
                                          "--tracking.tracking_uri", uri,
                                          "--tracking.run_name", name,
                                          "--data.cache_dir", str(root / "hf"),
                                          "--train.out_dir", str(root / name), *extra])
        out[name] = train(recipe)
    return uri, root, out


def run_cli(capsys, *argv):
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_eval_measures_logs_and_writes_beside_the_checkpoint(models, capsys):
    uri, root, out = models
    ckpt = out["small-a"].checkpoint
    status, stdout, err = run_cli(capsys, "eval", ckpt, *FAST_EVAL, "--json",
                                  "--hardware", "custom:0.1:20:test-cpu", "--tracking-uri", uri)
    assert status == 0, err
    result = json.loads(stdout)
    assert [b["batch_size"] for b in result["batches"]] == [1, 2]
    for b in result["batches"]:
        assert b["tokens"] == b["batch_size"] * 8
        assert b["tokens_per_wh"] == pytest.approx(b["tokens"] / (b["joules"] / 3600))
    assert result["method"] == "estimate" and result["measured"] is False
    assert result["energy_basis"]["attribution"] == "process"  # this process's CPU time
    assert result["uncertainty"]["relative"] == 0.5
    phys = result["physics"]
    assert phys["landauer_ratio"] > 1e6  # far above the bound, as every real machine is
    assert 0 < phys["ceiling_fraction"]
    assert phys["ceiling_tokens_per_wh"] == pytest.approx(
        0.1e12 / 20 / result["physics"]["flops_per_token"] * 3600)
    assert result["break_even_tokens"] == pytest.approx(
        result["depth_joules"] / result["joules_per_token"])
    saved = json.loads(open(ckpt + ".depth-eval.json").read())
    assert saved["tokens_per_wh"] == result["tokens_per_wh"]
    model = MlflowClient(uri).get_logged_model(result["logged_model"])
    keys = {m.key for m in model.metrics}
    assert {"inference/tokens_per_wh", "inference/joules_per_token",
            "inference/tokens_per_wh_by_batch", "amortize/break_even_tokens"} <= keys
    assert model.tags["depth.inference_measured"] == "false"


def test_eval_from_a_logged_model_with_its_checkpoint_file(models, capsys):
    uri, _, out = models
    (_, model_id), *_ = sorted(out["small-b"].run_id and
                               [(int(m.tags["depth.step"]), m.model_id) for m in
                                MlflowClient(uri).search_logged_models(
                                    [MlflowClient(uri).get_experiment_by_name("compare")
                                     .experiment_id])
                                if m.source_run_id == out["small-b"].run_id], reverse=True)
    status, stdout, err = run_cli(capsys, "eval", model_id, *FAST_EVAL, "--tracking-uri", uri)
    assert status == 0, err
    assert "tokens/Wh" in stdout and f"LoggedModel {model_id}" in stdout
    status, _, err = run_cli(capsys, "eval", out["small-a"].run_id and
                             f"runs:/{out['small-a'].run_id}", *FAST_EVAL, "--tracking-uri", uri)
    assert status == 2 and "log_checkpoints=True" in err and len(err.splitlines()) == 1


def test_amortize_by_hand_and_logged(models, capsys):
    uri, _, out = models
    ckpt = out["small-a"].checkpoint
    status, _, err = run_cli(capsys, "amortize", ckpt, "--served-tokens", "1000",
                             "--joules-per-token", "0.5", "--json", "--tracking-uri", uri)
    assert status == 0, err
    status, stdout, _ = run_cli(capsys, "amortize", ckpt, "--served-tokens", "1000",
                                "--joules-per-token", "0.5", "--json", "--tracking-uri", uri)
    result = json.loads(stdout)
    depth_j = torch.load(ckpt, weights_only=True)["depth"]["depth_joules"]
    assert result["break_even_tokens"] == pytest.approx(depth_j / 0.5)
    assert result["amortized_j_per_token"] == pytest.approx(depth_j / 1000 + 0.5)
    assert result["logged_model"]
    status, _, err = run_cli(capsys, "amortize", ckpt, "--tokens-per-day", "10")
    assert status == 2 and "--days" in err


def test_report_compares_the_models_in_one_table_and_three_plots(models, capsys, tmp_path):
    uri, _, out = models
    run_cli(capsys, "eval", out["small-b"].checkpoint, *FAST_EVAL, "--tracking-uri", uri)
    status, stdout, err = run_cli(capsys, "report", "--experiment", "compare", "--out",
                                  str(tmp_path / "rep"), "--tracking-uri", uri, "--json")
    assert status == 0, err
    rows = json.loads(stdout)
    assert sorted(r["model"].split("-step-")[0] for r in rows) == ["small-a", "small-b"]
    assert all(r["depth_kwh"] > 0 and r["method"] == "estimate" for r in rows)
    assert all(r["inference_tokens_per_wh"] for r in rows)
    import matplotlib.image

    for name in ("cumulative_joules.png", "tokens_per_wh_by_batch.png", "amortization.png"):
        png = tmp_path / "rep" / name
        assert png.stat().st_size > 20_000
        pixels = matplotlib.image.imread(png)
        assert pixels.std() > 0.05  # lines and text, not a blank canvas
    status, _, err = run_cli(capsys, "report", "--experiment", "nope", "--tracking-uri", uri)
    assert status == 2 and "compare" in err
