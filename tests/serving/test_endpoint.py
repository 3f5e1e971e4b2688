"""`depth eval --endpoint` against a real OpenAI-compatible server (`transformers serve`)
on 127.0.0.1, serving tiny GPT-2 models built here; the estimate meter (no sensor on this
machine) billed to the server's process; the figures attached to a trained checkpoint
with --source, then used by `depth amortize` and `depth report`."""

from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
from mlflow import MlflowClient

from depth import DepthCallback
from depth.cli import main
from depth.cli.endpoint import print_endpoint
from tests.doubles.meters import ClockMeter
from tests.support.lightning_models import TinyLM, loader, sqlite_mlflow_logger

pytest.importorskip("transformers", reason="the [serve] extra: transformers serve")

FAST = ["--prompt-tokens", "16", "--new-tokens", "4", "--repeats", "2",
        "--min-window-s", "0.2", "--idle-s", "0.2", "--max-spread", "100"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tests.support.openai_server import TransformersServer, tiny_gpt2

    root = tmp_path_factory.mktemp("served")
    plain, ends = tiny_gpt2(root / "plain"), tiny_gpt2(root / "ends", ends_at_once=True)
    srv = TransformersServer(root / "server")
    srv.start()
    yield srv, str(plain), str(ends)
    srv.stop()


def run_cli(capsys, *argv):
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_sweep_attaches_to_the_trained_checkpoint(server, tmp_path, capsys):
    srv, plain, _ = server
    uri, logger = sqlite_mlflow_logger(tmp_path, "served")
    trainer = pl.Trainer(callbacks=[DepthCallback(ClockMeter(), mlflow_writer="thread")],
                         logger=logger, max_epochs=1, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1,
                         default_root_dir=tmp_path)
    trainer.fit(TinyLM(), loader(n=16))
    ckpt = trainer.checkpoint_callback.best_model_path
    status, out, err = run_cli(capsys, "eval", "--endpoint", srv.endpoint, "--model-name", plain,
                               "--concurrency", "1,2", *FAST, "--source", ckpt, "--json",
                               "--tracking-uri", uri)
    assert status == 0, err
    result = json.loads(out)
    assert [b["concurrency"] for b in result["batches"]] == [1, 2]
    assert result["prompt_tokens"] == 16  # calibrated from the server's usage
    assert result["fixed_output_length"] is False  # transformers serve refuses ignore_eos
    for b in result["batches"]:
        assert b["requests"] >= 2 * b["concurrency"]  # 2 windows of >= c answers each
        assert b["tokens"] == 4 * b["requests"] == sum(b["repeat_tokens"])  # no EOS here
        assert b["joules"] > 0 and b["attempts"] == 1
        assert b["tokens_per_wh"] == pytest.approx(b["tokens"] / (b["joules"] / 3600))
    # No sensor here: the estimate bills the *server's* process, found by its port.
    assert result["server_pid"] == srv.proc.pid
    assert result["energy_basis"]["attribution"] == "server-process"
    assert result["method"] == "estimate" and result["measured"] is False
    assert any(f"server process {srv.proc.pid}" in line for line in result["meter_covers"])
    assert result["break_even_tokens"] == pytest.approx(
        result["depth_joules"] / result["joules_per_token"])
    assert json.loads(open(ckpt + ".depth-eval.json").read())["kind"] == "endpoint"
    model = MlflowClient(uri).get_logged_model(result["logged_model"])
    assert {"inference/tokens_per_wh", "inference/tokens_per_wh_by_batch"} <= {
        m.key for m in model.metrics}
    assert model.tags["depth.inference_endpoint"] == srv.endpoint
    status, out, err = run_cli(capsys, "amortize", ckpt, "--served-tokens", "1e6", "--json",
                               "--tracking-uri", uri)
    assert status == 0, err
    assert json.loads(out)["inference_j_per_token"] == pytest.approx(result["joules_per_token"])
    status, out, err = run_cli(capsys, "report", "--experiment", "served", "--out",
                               str(tmp_path / "report"), "--json", "--no-log",
                               "--tracking-uri", uri)
    assert status == 0, err
    row, = json.loads(out)
    assert row["inference_tokens_per_wh"] == pytest.approx(result["tokens_per_wh"])


def test_tokens_are_counted_from_usage_when_the_server_stops_at_eos(server, capsys):
    srv, _, ends = server  # this model's every answer is 1 token, whatever max_tokens says
    status, out, err = run_cli(capsys, "eval", "--endpoint", srv.endpoint, "--model-name", ends,
                               "--concurrency", "2", *FAST, "--json", "--no-log")
    assert status == 0, err
    result = json.loads(out)
    row, = result["batches"]
    assert row["tokens"] == row["requests"] and row["completion_tokens_per_request"] == 1
    assert result["source"] is None and result["break_even_tokens"] is None
    print_endpoint(result)
    table = capsys.readouterr().out
    assert "at most (the server ends at EOS" in table
    assert f"meter covers cpu:0, dram:0: an ESTIMATE of server process {srv.proc.pid}" in table
    assert "break-even: no --source" in table


def test_a_model_the_server_cannot_load_is_one_line(server, capsys):
    srv, _, _ = server
    status, _, err = run_cli(capsys, "eval", "--endpoint", srv.endpoint, "--model-name",
                             "no/such-model", *FAST, "--no-log")
    assert status == 2 and "answered HTTP" in err and len(err.splitlines()) == 1
