"""What a new user's trial of `depth eval --source`, `depth amortize` and the eval table
found (issue 14): figures attached to an unrelated trained model or replacing an earlier
eval without a word, a model folder without depth.json called "a directory", progress
printed before the heading, and a held-out loss that is silently absent."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from depth import DepthCallback
from depth.cli import main
from depth.gpt.module import GPTModule
from tests.doubles.meters import ClockMeter
from tests.support.lightning_models import ByteData
from tests.support.merged_cli import merged

transformers = pytest.importorskip("transformers")  # the [hf] extra; in .ci's [test] too

FAST = ["--batch-sizes", "1", "--prompt-tokens", "4", "--new-tokens", "3", "--repeats", "1",
        "--min-window-s", "0", "--idle-s", "0", "--meter", "estimate", "--no-log"]
PROGRESS = re.compile(r"^  batch +1: ", re.M)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(root, a depth GPT checkpoint with its record, the same model exported to a Hugging
    Face folder whose depth.json was then removed, an unrelated GPT-2 folder)."""
    root = tmp_path_factory.mktemp("attach-trial")
    module = GPTModule({"vocab_size": 256, "block_size": 16, "n_layer": 1, "n_head": 2,
                        "n_embd": 16}, {"decay_steps": 2, "warmup_steps": 0})
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=root,
                         callbacks=[DepthCallback(ClockMeter(), tracking=False)])
    trainer.fit(module, DataLoader(ByteData(8), batch_size=4))
    ckpt = root / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    exported = root / "exported"
    assert main(["export", str(ckpt), str(exported)]) == 0
    (exported / "depth.json").unlink()  # e.g. copied without it: no training record now
    torch.manual_seed(0)
    other = root / "other-gpt2"
    transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=2)).save_pretrained(other)
    return root, str(ckpt), str(exported), str(other)


def test_source_ties_and_replacements_are_said_in_one_line_each(trained):
    _, ckpt, exported, other = trained
    status, text = merged("eval", exported, "--source", ckpt, *FAST)
    assert status == 0, text
    assert "warning" not in text  # the same parameter count as the record states: tied
    first = json.loads(Path(ckpt + ".depth-eval.json").read_text())
    assert first["model"] == exported and first["model_parameters"] == first["parameters"]
    status, text = merged("eval", other, "--source", ckpt, *FAST)  # probably another model
    assert status == 2 and len(text.splitlines()) == 1, text
    assert text.startswith("depth eval: the evaluated model has ") and (
        f"{ckpt}'s record states" in text and "give --force" in text)
    assert json.loads(Path(ckpt + ".depth-eval.json").read_text()) == first  # kept
    status, text = merged("eval", other, "--source", ckpt, "--force", *FAST)
    assert status == 0, text
    lines = text.splitlines()
    tie = [line for line in lines if "parameters but" in line]
    assert len(tie) == 1 and tie[0].startswith("depth eval: warning: the evaluated model has ")
    assert f"{ckpt}'s record states" in tie[0] and "probably not the model" in tie[0]
    assert "attached anyway: forced" in tie[0]
    replaced = [line for line in lines if "replaced the previous eval" in line]
    assert len(replaced) == 1, text
    assert f"attached to {ckpt}: {exported} measured on {first['measured_at']}" in replaced[0]
    assert f"{first['tokens_per_wh']:,.0f} tokens/Wh" in replaced[0]
    assert lines.index(tie[0]) < lines.index(replaced[0])  # the tie is said before measuring
    assert json.loads(Path(ckpt + ".depth-eval.json").read_text())["model"] == other


def test_the_python_api_warns_the_same(trained):
    from depth import log_inference, measure_inference

    _, ckpt, _, other = trained
    model = transformers.AutoModelForCausalLM.from_pretrained(other)
    fast = dict(batch_sizes=[1], prompt_tokens=4, new_tokens=2, repeats=1, min_window_s=0,
                idle_s=0, meter="estimate", log=False)
    with pytest.raises(ValueError, match=r"the measured model has [\d,]+ parameters but .*"
                       r"record states .*force=True"):
        measure_inference(model, source=ckpt, **fast)
    with pytest.warns(UserWarning, match=r"depth: warning: the measured model has [\d,]+ "
                      r"parameters but .*record states") as said:
        result = measure_inference(model, source=ckpt, force=True, **fast)
    assert {w.filename for w in said} == {__file__}  # the caller's line, not depth's
    assert result["warnings"][0].startswith("warning: the measured model has")
    with pytest.raises(ValueError, match="give --force"):
        log_inference(result, ckpt, log=False)
    with pytest.warns(UserWarning, match="cannot be checked against"):
        log_inference({**result, "model_parameters": None}, ckpt, log=False)
    with warnings.catch_warnings(record=True) as caught:  # the record's own size: tied
        warnings.simplefilter("always")
        log_inference({**result, "model_parameters": result["parameters"]}, ckpt, log=False)
    said = [str(w.message) for w in caught]
    assert len(said) == 1 and said[0].startswith("depth: replaced the previous eval"), said
    assert caught[0].filename == __file__  # raised deep in depth, pointing here


def test_amortize_of_a_model_folder_without_depth_json_says_so(trained, capsys):
    _, _, exported, _ = trained
    status = main(["amortize", exported, "--served-tokens", "1e6", "--no-log"])
    err = capsys.readouterr().err
    assert status == 2 and len(err.splitlines()) == 1, err
    assert "is a directory" not in err
    assert f"{exported} is a model folder with no depth.json (no training record)" in err
    assert "--source CKPT" in err and "depth export CKPT --format hf" in err


@pytest.mark.parametrize("form", ["checkpoint", "model-class", "hf-dir"])
def test_the_heading_comes_before_the_progress_lines(trained, form):
    _, ckpt, exported, _ = trained
    argv = {"checkpoint": [ckpt], "hf-dir": [exported, "--source", ckpt],
            "model-class": [ckpt, "--model-class", "depth.gpt.module:GPTModule"]}[form]
    status, text = merged("eval", *argv, *FAST)
    assert status == 0, text
    named = f"{exported} (attached to {ckpt})" if form == "hf-dir" else ckpt
    heading = text.index(f"depth eval: {named}  (cpu, fp32, estimate")
    assert text.count(f"depth eval: {named}  (") == 1  # printed once, not again with the table
    assert 0 <= heading < PROGRESS.search(text).start() < text.index("  best: batch 1")


def test_a_model_without_a_recipe_says_its_loss_was_not_measured(trained, capsys):
    _, ckpt, _, other = trained
    assert main(["eval", other, *FAST, "--json"]) == 0
    physics = json.loads(capsys.readouterr().out)["physics"]
    assert physics["held_out_loss_nats"] is None
    assert physics["loss"] == "not measured (not a depth recipe)"
    assert main(["eval", other, *FAST]) == 0
    out = capsys.readouterr().out
    assert "  loss: not measured (not a depth recipe), so no Landauer bound" in out
    assert "  not attached (no training record: give --source)" in out
    assert not Path(other + ".depth-eval.json").exists()  # a record-less model: never beside
    assert main(["eval", ckpt, *FAST]) == 0  # depth's GPT, saved without its recipe
    assert "loss: not measured (the checkpoint names no recipe, so no held-out data)" in (
        capsys.readouterr().out)


def test_an_exported_folder_says_why_its_loss_is_not_measured(trained, capsys):
    root, ckpt, _, _ = trained
    folder = root / "exported-with-record"
    assert main(["export", ckpt, str(folder)]) == 0
    capsys.readouterr()
    assert main(["eval", str(folder), *FAST, "--json"]) == 0
    physics = json.loads(capsys.readouterr().out)["physics"]
    assert physics["loss"] == ("not measured (Hugging Face folder: held-out loss needs the "
                               "depth checkpoint)")
