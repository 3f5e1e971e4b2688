"""`depth verify` and `depth provenance` on real checkpoints, as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger

from depth import DepthCallback
from tests.doubles.meters import ClockMeter
from tests.support.lightning_models import TinyLM, loader


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("verify")
    trainer = pl.Trainer(callbacks=[DepthCallback(ClockMeter())], logger=CSVLogger(root),
                         default_root_dir=root, max_epochs=1, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(TinyLM(step_sleep_s=0.005), loader(n=40))
    return Path(trainer.checkpoint_callback.best_model_path)


def depth(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "depth.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def one_line(out: subprocess.CompletedProcess) -> str:
    text = (out.stdout + out.stderr).strip()
    assert "Traceback" not in text
    assert len(text.splitlines()) == 1, text
    return text


def rewrite(src: Path, dst: Path, change) -> Path:
    ckpt = torch.load(src, weights_only=True)
    change(ckpt)
    torch.save(ckpt, dst)
    return dst


def test_untouched_checkpoint_verifies(checkpoint):
    out = depth("verify", checkpoint)
    assert out.returncode == 0
    assert one_line(out).startswith("OK ") and "weights and record match" in out.stdout


def test_tampered_weights_are_a_mismatch(checkpoint, tmp_path):
    def nudge(ckpt):
        ckpt["state_dict"]["head.bias"][0] += 1e-3

    out = depth("verify", rewrite(checkpoint, tmp_path / "w.ckpt", nudge))
    assert out.returncode == 1 and "weights changed" in one_line(out)


def test_edited_record_is_a_mismatch(checkpoint, tmp_path):
    def halve(ckpt):
        ckpt["depth"]["train_joules"] /= 2

    out = depth("verify", rewrite(checkpoint, tmp_path / "r.ckpt", halve))
    assert out.returncode == 1 and "record was edited" in one_line(out)


def test_missing_record_is_a_mismatch(checkpoint, tmp_path):
    out = depth("verify", rewrite(checkpoint, tmp_path / "n.ckpt", lambda c: c.pop("depth")))
    assert out.returncode == 1 and "no depth record" in one_line(out)


@pytest.mark.parametrize("kind", ["truncated", "missing", "text"])
def test_unreadable_files_exit_2_with_one_line(checkpoint, tmp_path, kind):
    path = tmp_path / f"{kind}.ckpt"
    if kind == "truncated":
        data = checkpoint.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "text":
        path.write_text("not a checkpoint\n")
    out = depth("verify", path)
    assert out.returncode == 2
    one_line(out)


def test_code_in_a_checkpoint_is_not_run_without_trust(checkpoint, tmp_path):
    path = rewrite(checkpoint, tmp_path / "obj.ckpt",
                   lambda c: c.__setitem__("extra", Path("/etc")))  # a pickled object
    out = depth("verify", path)
    assert out.returncode == 2 and "--trust" in one_line(out)
    assert depth("verify", path, "--trust").returncode == 0


def test_provenance_table_and_json(checkpoint):
    out = depth("provenance", checkpoint)
    assert out.returncode == 0
    assert "train energy" in out.stdout and "segments" in out.stdout and "fit" in out.stdout
    data = json.loads(depth("provenance", checkpoint, "--json").stdout)
    assert data["optimizer_steps"] == 10 and data["train_tokens"] == 320
    assert data["record_sha256"] and data["weights_sha256"]


def test_provenance_of_a_bad_path_is_one_line(tmp_path):
    out = depth("provenance", tmp_path / "nope.ckpt")
    assert out.returncode == 2 and "no such file" in one_line(out)
