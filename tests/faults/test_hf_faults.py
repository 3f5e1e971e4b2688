"""Bad input to `depth export` and to `depth eval` of a Hugging Face folder: one line that
names the problem, exit status 2, and nothing lost or half-written."""

from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from depth import DepthCallback
from depth.cli import main
from depth.gpt.module import GPTModule
from tests.doubles.meters import ClockMeter
from tests.support.lightning_models import ByteData

transformers = pytest.importorskip("transformers")  # the [hf] extra; in .ci's [test] too


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A GPTModule trained two steps with DepthCallback (a clock meter at the hardware
    boundary), saved by Lightning: a depth GPT checkpoint without a recipe."""
    root = tmp_path_factory.mktemp("hf-faults")
    module = GPTModule({"vocab_size": 256, "block_size": 16, "n_layer": 1, "n_head": 2,
                        "n_embd": 16}, {"decay_steps": 2, "warmup_steps": 0})
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=root,
                         callbacks=[DepthCallback(ClockMeter(), tracking=False)])
    trainer.fit(module, DataLoader(ByteData(16), batch_size=4))
    path = root / "model.ckpt"
    trainer.save_checkpoint(path)
    return path


def run_cli(capsys, *argv):
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def one_line(err: str) -> str:
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


def test_export_never_overwrites_unless_forced(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    status, _, err = run_cli(capsys, "export", str(checkpoint), str(out))
    assert status == 2 and "exists" in one_line(err) and "--force" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    status, _, err = run_cli(capsys, "export", str(checkpoint), str(out), "--force")
    assert status == 0, err
    names = {p.name for p in out.iterdir()}
    assert "keep.txt" not in names and {"config.json", "tokenizer.json"} <= names
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left


def test_export_refuses_a_checkpoint_that_is_not_a_depth_gpt(checkpoint, tmp_path, capsys):
    saved = torch.load(checkpoint, weights_only=False)
    saved["hyper_parameters"] = {}  # a user's own module: no model/optim hyperparameters
    other = tmp_path / "other.ckpt"
    torch.save(saved, other)
    status, _, err = run_cli(capsys, "export", str(other), str(tmp_path / "out"))
    assert status == 2 and "not a depth GPT recipe checkpoint" in one_line(err)
    assert not (tmp_path / "out").exists()


def test_export_names_the_formats_it_has(checkpoint, tmp_path, capsys):
    status, _, err = run_cli(capsys, "export", str(checkpoint), str(tmp_path / "o"),
                             "--format", "onnx")
    assert status == 2 and one_line(err) == "depth export: --format takes hf (got 'onnx')"


def test_eval_of_a_folder_with_a_damaged_record_or_config(checkpoint, tmp_path, capsys):
    out = tmp_path / "model"
    assert main(["export", str(checkpoint), str(out)]) == 0
    capsys.readouterr()
    (out / "depth.json").write_text('{"train_joules": ')  # cut short
    status, _, err = run_cli(capsys, "eval", str(out), "--no-log", "--idle-s", "0")
    assert status == 2 and "depth.json: not a depth record" in one_line(err)
    (out / "depth.json").unlink()
    (out / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    status, _, err = run_cli(capsys, "eval", str(out), "--no-log", "--idle-s", "0")
    assert status == 2 and "cannot load it as a causal language model" in one_line(err)
    status, _, err = run_cli(capsys, "eval", "hf:", "--no-log", "--idle-s", "0")
    assert status == 2 and "hf: needs a model id or directory" in one_line(err)


def test_a_hub_id_while_offline_names_the_local_directory_fix(tmp_path):
    """`hf:NAME` with HF_HUB_OFFLINE=1 and nothing cached: one line that names the fix (a
    local directory), not transformers' connection advice cut off mid-URL. A process of its
    own: huggingface_hub reads HF_HUB_OFFLINE once, when it is imported."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home"),
           "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, "-m", "depth.cli", "eval", "hf:nobody/tiny-gpt",
                           "--no-log", "--idle-s", "0"], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    err = one_line(done.stderr)
    assert done.returncode == 2 and done.stdout == ""
    assert err == ("depth eval: hf:nobody/tiny-gpt: HF_HUB_OFFLINE is set and "
                   "nobody/tiny-gpt is not in the local Hugging Face cache: give a local "
                   "directory with config.json instead (one that save_pretrained or `depth "
                   "export` wrote), or fetch it once while online")
