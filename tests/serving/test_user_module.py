"""A user's own LightningModule (nanoGPT-style, no KV cache, ``(logits, loss)``), trained
with DepthCallback as a user would, then `depth eval CKPT --model-class pkg.mod:Class`,
`depth amortize CKPT` and `depth report` through the CLI, on a real SQLite MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from depth.cli import main
from tests.support.outsider_gpt import LitNanoGPT, train_with_depth

CLASS = "tests.support.outsider_gpt:LitNanoGPT"
FAST_EVAL = ["--batch-sizes", "1,2", "--prompt-tokens", "8", "--new-tokens", "8",
             "--repeats", "3", "--min-window-s", "0.02", "--idle-s", "0"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(tracking URI, step-4 checkpoint, run id): the user's module trained 4 steps."""
    uri, checkpoints, run_id = train_with_depth(tmp_path_factory.mktemp("outsider"))
    return uri, checkpoints[-1], run_id


def run_cli(capsys, *argv):
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_eval_amortize_and_report_of_a_users_own_module(trained, capsys, tmp_path):
    uri, ckpt, run_id = trained
    # prompt + new tokens (8 + 12) exceed the model's 16-token context: cropped, not refused
    status, stdout, err = run_cli(capsys, "eval", ckpt, "--model-class", CLASS, *FAST_EVAL,
                                  "--new-tokens", "12", "--json", "--tracking-uri", uri)
    assert status == 0, err
    result = json.loads(stdout)
    assert result["kv_cache"] is False and result["context_tokens"] == 16
    assert result["cropped"] is True and result["vocab_size"] == 256  # from the logits
    assert result["model_class"] == CLASS
    assert [b["tokens"] for b in result["batches"]] == [12, 24]
    record = torch.load(ckpt, weights_only=True)["depth"]
    assert result["source"] == ckpt and result["record_sha256"] == record["record_sha256"]
    assert result["break_even_tokens"] == pytest.approx(
        record["depth_joules"] / result["joules_per_token"])
    assert json.loads(Path(ckpt + ".depth-eval.json").read_text())["kv_cache"] is False
    model = MlflowClient(uri).get_logged_model(result["logged_model"])
    assert model.source_run_id == run_id
    assert {m.key for m in model.metrics} >= {"inference/tokens_per_wh",
                                             "inference/tokens_per_wh_by_batch"}
    assert model.tags["depth.inference_kv_cache"] == "false"

    from depth import inference_table  # what `depth eval` prints without --json

    assert "no KV cache" in inference_table(result)
    assert "context 16 tokens (prompt 8 + 12 new exceed it: cropped)" in inference_table(result)

    status, stdout, err = run_cli(capsys, "amortize", ckpt, "--served-tokens", "1e6",
                                  "--json", "--tracking-uri", uri)
    assert status == 0, err
    amortized = json.loads(stdout)
    saved = json.loads(Path(ckpt + ".depth-eval.json").read_text())
    assert amortized["inference_j_per_token"] == pytest.approx(saved["joules_per_token"])
    assert amortized["logged_model"] == result["logged_model"]

    status, stdout, err = run_cli(capsys, "report", "--experiment", "outsiders", "--out",
                                  str(tmp_path / "rep"), "--tracking-uri", uri, "--json",
                                  "--no-log")
    assert status == 0, err
    (row,) = json.loads(stdout)
    assert row["model_id"] == result["logged_model"]
    assert row["inference_tokens_per_wh"] == pytest.approx(saved["tokens_per_wh"])
    assert row["break_even_tokens"] == pytest.approx(saved["break_even_tokens"])


def test_without_model_class_the_refusal_names_the_option(trained, capsys):
    _, ckpt, _ = trained
    status, _, err = run_cli(capsys, "eval", ckpt, *FAST_EVAL, "--no-log")
    assert status == 2 and "--model-class" in err and len(err.splitlines()) == 1


def test_a_custom_loop_through_the_python_api(trained, capsys):
    import depth

    uri, ckpt, _ = trained
    module = LitNanoGPT.load_from_checkpoint(ckpt).eval()  # loaded the user's own way

    def generate(prompt, new_tokens):  # the user's loop: nanoGPT's generate, greedy
        idx = prompt
        for _ in range(new_tokens):
            logits, _ = module(idx[:, -16:])
            idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        return idx

    fast = dict(batch_sizes=[1, 2], prompt_tokens=8, new_tokens=4, repeats=2,
                min_window_s=0.02, idle_s=0.0)
    result = depth.measure_inference(generate=generate, vocab_size=256, source=ckpt,
                                     tracking_uri=uri, **fast)
    assert result["generation"] == "generate" and result["source"] == ckpt
    assert [b["tokens"] for b in result["batches"]] == [4, 8]
    assert result["batches"][0]["prefill_joules"] is None  # one window per generation
    assert result["logged_model"] and result["written"] == ckpt + ".depth-eval.json"
    table = depth.inference_table(result)
    assert "generate callable" in table and "break-even" in table

    result = depth.measure_inference(module, **fast)  # measured first, attached later
    assert result["kv_cache"] is False and result["vocab_size"] == 256
    assert "logged_model" not in result and "not attached" in depth.inference_table(result)
    attached = depth.log_inference(result, ckpt, tracking_uri=uri)
    assert attached["logged_model"] and attached["break_even_tokens"] > 0
    status, stdout, err = run_cli(capsys, "amortize", ckpt, "--served-tokens", "1e6",
                                  "--json", "--no-log")
    assert status == 0, err
    assert json.loads(stdout)["inference_j_per_token"] == pytest.approx(
        attached["joules_per_token"])
    with pytest.raises(ValueError, match="joules_per_token"):
        depth.log_inference({"tokens_per_wh": 1.0}, ckpt)
