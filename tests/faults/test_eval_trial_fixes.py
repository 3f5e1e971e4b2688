"""What a second trial of `depth eval` / `depth amortize` on the user's own LightningModule
found (issue 14): an unreachable tracking server found only after measuring, an eval on
the checkpoint's LoggedModel that `depth amortize CKPT` missed, logits of the wrong shape
or NaN measured silently, options accepted and ignored or checked late, and an eval file
that never named its LoggedModel."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch

from depth.cli import main
from tests.support.outsider_gpt import LitNanoGPT, train_with_depth

CLASS = "tests.support.outsider_gpt:LitNanoGPT"
FAST = ["--batch-sizes", "1", "--prompt-tokens", "4", "--new-tokens", "4", "--repeats", "1",
        "--min-window-s", "0", "--idle-s", "0", "--remeasures", "0", "--meter", "estimate"]
DOWN = "http://127.0.0.1:1"  # nothing listens on port 1


class TransposedLogits(LitNanoGPT):
    """Logits B x V x T: the vocabulary where the positions belong."""

    def forward(self, idx):
        return self.model(idx)[0].transpose(1, 2)


class NaNLogits(LitNanoGPT):
    def forward(self, idx):
        return self.model(idx)[0] * float("nan")


class InfLogits(LitNanoGPT):
    def forward(self, idx):
        logits = self.model(idx)[0].clone()
        logits[..., 0] = float("inf")
        return logits


class OneRowLogits(LitNanoGPT):
    """Logits for the first sequence of the batch only."""

    def forward(self, idx):
        return self.model(idx)[0][:1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(URI, the step-4 checkpoint of the user's module, trained with DepthCallback and
    an MLflow logger on a SQLite store, so it has a LoggedModel)."""
    uri, checkpoints, _ = train_with_depth(tmp_path_factory.mktemp("trial14b"))
    return uri, checkpoints[-1]


def run(capsys, *argv):
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def copy_of(ckpt: str, tmp_path: Path) -> str:
    """The checkpoint copied (record and all), so an eval file beside it is this test's."""
    path = tmp_path / "model.ckpt"
    shutil.copy(ckpt, path)
    return str(path)


def test_an_unreachable_tracking_server_is_refused_before_loading(trained, capsys, tmp_path):
    _, ckpt = trained
    ckpt = copy_of(ckpt, tmp_path)
    started = time.monotonic()
    status, out, err = run(capsys, "eval", ckpt, "--model-class", CLASS, "--tracking-uri",
                           DOWN, *FAST)
    assert status == 2 and out == "" and len(err.splitlines()) == 1, err
    assert err.startswith(f"depth eval: tracking server {DOWN} is unreachable") and (
        "--no-log" in err)
    assert time.monotonic() - started < 10  # the probe's 2 s, not a measurement
    assert not Path(ckpt + ".depth-eval.json").exists()
    status, out, err = run(capsys, "eval", ckpt, "--model-class", CLASS, "--tracking-uri",
                           DOWN, "--no-log", *FAST)
    assert status == 0, err  # measured without MLflow, as asked
    assert "not logged to MLflow (--no-log)" in out


def test_the_python_api_refuses_an_unreachable_server_too(trained):
    from depth import measure_inference

    _, ckpt = trained
    model = LitNanoGPT(block_size=16, n_layer=1, n_head=2, n_embd=32)
    with pytest.raises(ValueError, match=r"tracking server http://127\.0\.0\.1:1 is "
                       r"unreachable .*log=False"):
        measure_inference(model, source=ckpt, tracking_uri=DOWN, batch_sizes=[1],
                          prompt_tokens=4, new_tokens=2, repeats=1, min_window_s=0,
                          idle_s=0, meter="estimate")


def test_amortize_of_a_checkpoint_finds_the_eval_on_its_logged_model(trained, capsys,
                                                                      tmp_path):
    from depth.tracking.sources import find_logged_model

    uri, ckpt = trained
    record = torch.load(ckpt, weights_only=True)["depth"]
    model_id = find_logged_model(uri, record["record_sha256"])
    assert model_id
    Path(ckpt + ".depth-eval.json").unlink(missing_ok=True)
    # measured elsewhere and attached to the LoggedModel only: no file beside ckpt
    status, out, err = run(capsys, "eval", ckpt, "--model-class", CLASS, "--source",
                           model_id, "--tracking-uri", uri, *FAST)
    assert status == 0, err
    assert f"logged on LoggedModel {model_id}" in out
    assert not Path(ckpt + ".depth-eval.json").exists()
    status, out, err = run(capsys, "amortize", ckpt, "--served-tokens", "1e6",
                           "--tracking-uri", uri, "--json", "--no-log")
    assert status == 0, err
    result = json.loads(out)
    assert result["inference_from"] == f"{model_id} inference/joules_per_token"
    status, out, _ = run(capsys, "amortize", model_id, "--served-tokens", "1e6",
                         "--tracking-uri", uri, "--json", "--no-log")
    assert status == 0 and json.loads(out)["inference_j_per_token"] == (
        result["inference_j_per_token"])  # the same figure as the m-ID route


def test_the_eval_file_names_the_logged_model(trained, capsys, tmp_path):
    uri, ckpt = trained
    status, out, err = run(capsys, "eval", ckpt, "--model-class", CLASS, "--tracking-uri",
                           uri, *FAST)
    assert status == 0, err
    saved = json.loads(Path(ckpt + ".depth-eval.json").read_text())
    assert saved["logged_model"] and saved["logged_model"].startswith("m-")
    assert f"logged on LoggedModel {saved['logged_model']}" in out
    Path(ckpt + ".depth-eval.json").unlink()  # leave the checkpoint as the fixture made it


@pytest.mark.parametrize("cls, says", [
    (TransposedLogits, "logits of shape (2, 256, 1) for a 2 x 4 prompt"),
    (NaNLogits, "with NaN values"),
    (InfLogits, "with inf values"),
    (OneRowLogits, "logits for 1 sequences of a batch of 2"),
])
def test_bad_logits_are_refused_before_measuring(trained, capsys, tmp_path, cls, says):
    _, ckpt = trained
    ckpt = copy_of(ckpt, tmp_path)
    good = Path(ckpt + ".depth-eval.json")
    good.write_text('{"tokens_per_wh": 1000.0, "joules_per_token": 3.6}')
    before = good.read_text()
    spec = f"tests.faults.test_eval_trial_fixes:{cls.__name__}"
    status, out, err = run(capsys, "eval", ckpt, "--model-class", spec, "--no-log", *FAST)
    assert status == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("depth eval: the model's forward(idx) returned ") and says in err
    assert "batch" not in out  # nothing measured
    assert good.read_text() == before  # the good eval is kept


def test_served_tokens_and_a_rate_together_are_refused(trained, capsys):
    _, ckpt = trained
    status, _, err = run(capsys, "amortize", ckpt, "--served-tokens", "1e6",
                         "--tokens-per-day", "1e6", "--days", "3", "--no-log")
    assert status == 2 and len(err.splitlines()) == 1, err
    assert "give --served-tokens, or --tokens-per-day with --days, not both" in err


@pytest.mark.parametrize("flag, value", [
    ("--loss-batches", "-3"), ("--repeats", "0"), ("--prompt-tokens", "0"),
    ("--new-tokens", "-5"), ("--max-spread", "0.5"), ("--remeasures", "-1"),
])
def test_bad_counts_are_refused_before_the_model_is_read(capsys, tmp_path, flag, value):
    absent = str(tmp_path / "absent.ckpt")  # read after the checks: never reached
    argv = list(FAST)
    if flag in argv:
        i = argv.index(flag)
        del argv[i:i + 2]
    status, _, err = run(capsys, "eval", absent, "--model-class", CLASS, *argv, flag, value)
    assert status == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"depth eval: {flag} ") and value in err


def test_an_unstable_spread_is_shown_with_enough_digits(trained, capsys):
    from depth.serving.table import format_eval

    _, ckpt = trained
    status, out, err = run(capsys, "eval", ckpt, "--model-class", CLASS, "--no-log", "--json",
                           *FAST)
    assert status == 0, err
    result = json.loads(out)
    assert result["max_spread"] == 1.25
    batch = result["batches"][0]
    batch.update(spread_ratio=1.2534, unstable=True, attempts=1, repeats=2)
    text = format_eval(result)
    assert "x1.253 UNSTABLE" in text and "x1.25 " not in text
    assert "spread x1.253 (max/min) in its one attempt;" in text
    batch.update(attempts=3)
    assert "in each of 3 attempts" in format_eval(result)
