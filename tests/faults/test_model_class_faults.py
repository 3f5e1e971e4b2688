"""`depth eval --model-class` and `--source` given wrong: one line naming the option and the
fix, exit status 2, before anything is measured, nothing written where it does not belong."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from depth.cli import main
from tests.support.outsider_gpt import LitNanoGPT, train_with_depth

CLASS = "tests.support.outsider_gpt:LitNanoGPT"
FAST = ["--batch-sizes", "1", "--prompt-tokens", "4", "--new-tokens", "4", "--repeats", "1",
        "--min-window-s", "0", "--idle-s", "0"]


class DictOut(LitNanoGPT):
    """The user's module returning its logits in a dict: no form depth knows."""

    def forward(self, idx):
        logits, _ = self.model(idx)
        return {"logits": logits}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(URI, [step-2 checkpoint, step-4 checkpoint])."""
    uri, checkpoints, _ = train_with_depth(tmp_path_factory.mktemp("faults"))
    return uri, checkpoints


def eval_cli(capsys, *argv):
    status = main(["eval", *argv, *FAST])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.parametrize("spec, says", [
    ("tests.support.outsider_gpt", "package.module:Class"),
    ("tests.support.no_such_module:Model", "cannot import tests.support.no_such_module"),
    ("tests.support.outsider_gpt:Nope", "has no Nope"),
    ("tests.support.outsider_gpt:GPT", "not a LightningModule"),
    ("./tests/support/outsider_gpt.py:LitNanoGPT",
     "use module:Class (tests.support.outsider_gpt:LitNanoGPT), not a file path"),
])
def test_a_wrong_class_is_refused_before_the_checkpoint_is_read(spec, says, capsys, tmp_path):
    status, _, err = eval_cli(capsys, str(tmp_path / "absent.ckpt"), "--model-class", spec)
    assert status == 2 and len(err.splitlines()) == 1
    assert err.startswith("depth eval: --model-class") and says in err


def test_a_class_that_does_not_fit_the_checkpoint(trained, capsys):
    _, (_, ckpt) = trained
    status, _, err = eval_cli(capsys, ckpt, "--model-class",
                              "tests.support.lightning_models:TinyLM", "--no-log")
    assert status == 2 and len(err.splitlines()) == 1
    assert "TinyLM.load_from_checkpoint" in err and "failed" in err
    assert not Path(ckpt + ".depth-eval.json").exists()


def test_a_forward_without_logits_is_named(trained, capsys):
    _, (_, ckpt) = trained
    status, _, err = eval_cli(capsys, ckpt, "--model-class",
                              "tests.faults.test_model_class_faults:DictOut", "--no-log")
    assert status == 2 and len(err.splitlines()) == 1
    assert "forward(idx) returned dict" in err and ".logits" in err
    assert not Path(ckpt + ".depth-eval.json").exists()


def test_a_source_with_another_record_is_refused_before_measuring(trained, capsys):
    uri, (step2, step4) = trained
    status, _, err = eval_cli(capsys, step2, "--model-class", CLASS, "--source", step4,
                              "--tracking-uri", uri)
    assert status == 2 and len(err.splitlines()) == 1
    assert "carries its own depth record" in err and "leave out --source" in err
    assert not Path(step2 + ".depth-eval.json").exists()
    assert not Path(step4 + ".depth-eval.json").exists()


def test_a_model_without_a_record_needs_a_source_and_attaches_to_it(trained, capsys, tmp_path):
    import json

    uri, (_, step4) = trained
    bare = tmp_path / "exported.ckpt"  # the same weights, without depth's record
    checkpoint = torch.load(step4, weights_only=True)
    record = checkpoint.pop("depth")
    torch.save(checkpoint, bare)
    status, _, err = eval_cli(capsys, str(bare), "--model-class", CLASS, "--no-log")
    assert status == 2 and "carries no depth record" in err and "--source" in err
    status, out, err = eval_cli(capsys, str(bare), "--model-class", CLASS, "--source", step4,
                                "--tracking-uri", uri)
    assert status == 0, err
    assert f"depth eval: {bare} (attached to {step4})" in out and "no KV cache" in out
    assert not Path(str(bare) + ".depth-eval.json").exists()
    saved = json.loads(Path(step4 + ".depth-eval.json").read_text())
    assert saved["model"] == str(bare) and saved["record_sha256"] == record["record_sha256"]
    assert "logged on LoggedModel m-" in out


def test_a_bad_context_is_refused(capsys, tmp_path):
    status, _, err = eval_cli(capsys, str(tmp_path / "x.ckpt"), "--context-tokens", "0")
    assert status == 2 and "--context-tokens" in err


def test_amortize_before_any_eval_names_the_user_class_route(trained, capsys):
    _, (step2, _) = trained
    status = main(["amortize", step2, "--served-tokens", "1000", "--no-log"])
    err = capsys.readouterr().err
    assert status == 2 and len(err.splitlines()) == 1
    assert "--model-class package.module:Class" in err and f"--source {step2}" in err
