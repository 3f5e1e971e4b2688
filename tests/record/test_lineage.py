"""A lineage of three models: depth adds up, the chain is digest-linked and shown."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger

from depth import DepthCallback, read_provenance
from depth.record.lineage import chain, load_parent_weights
from depth.tracking.sources import resolve_parent
from tests.doubles.meters import ClockMeter
from tests.support.lightning_models import TinyLM, loader


def train(root: Path, module: TinyLM, callback: DepthCallback) -> Path:
    trainer = pl.Trainer(callbacks=[callback], logger=CSVLogger(root), default_root_dir=root,
                         max_epochs=1, enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", devices=1)
    trainer.fit(module, loader(n=24))
    return Path(trainer.checkpoint_callback.best_model_path)


@pytest.fixture(scope="module")
def lineage(tmp_path_factory):
    root = tmp_path_factory.mktemp("lineage")
    a = train(root / "a", TinyLM(step_sleep_s=0.01), DepthCallback(ClockMeter(), tracking=False))
    b = train(root / "b", TinyLM(step_sleep_s=0.01),
              DepthCallback(ClockMeter({"gpu:0": 300.0}), parent=a, tracking=False))
    c_module = TinyLM(step_sleep_s=0.01)
    load_parent_weights(c_module, b)  # fine-tuning C from B: the helper carries B's record
    c = train(root / "c", c_module, DepthCallback(ClockMeter(), tracking=False))
    return a, b, c


def test_depth_is_own_plus_every_ancestors(lineage):
    a, b, c = (read_provenance(p) for p in lineage)
    assert a.parent is None and a.depth_joules == pytest.approx(a.train_joules)
    assert b.parent["record_sha256"] == a.record_sha256
    assert c.parent["record_sha256"] == b.record_sha256
    assert c.parent["parent"]["record_sha256"] == a.record_sha256
    assert c.depth_joules == pytest.approx(a.train_joules + b.train_joules + c.train_joules)
    assert [n["record_sha256"] for n in chain(c.to_dict())][1:] == [b.record_sha256,
                                                                  a.record_sha256]


def test_editing_an_ancestor_breaks_the_childs_digest(lineage, tmp_path):
    _, _, c = lineage
    checkpoint = torch.load(c, weights_only=True)
    checkpoint["depth"]["parent"]["parent"]["train_joules"] = 0.0  # hide the grandparent
    torch.save(checkpoint, tmp_path / "edited.ckpt")
    out = subprocess.run([sys.executable, "-m", "depth.cli", "verify", tmp_path / "edited.ckpt"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "edited" in out.stderr
    with pytest.raises(ValueError, match="edited"):
        resolve_parent(checkpoint["depth"]["parent"])


def test_provenance_shows_the_chain(lineage):
    out = subprocess.run([sys.executable, "-m", "depth.cli", "provenance", lineage[2]],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    lines = out.stdout.split("lineage (this model first")[1].strip().splitlines()[1:]
    assert [line.split()[0] for line in lines] == ["0", "1", "2"]
    assert "depth (+ parents)" in out.stdout


def test_a_resumed_child_keeps_its_parent(lineage):
    _, b, _ = lineage
    state = torch.load(b, weights_only=True)["callbacks"]["DepthCallback"]
    assert state["parent"]["record_sha256"] == read_provenance(lineage[0]).record_sha256


def test_card_has_hub_co2_fields_and_our_energy(lineage, tmp_path):
    import yaml

    out = subprocess.run([sys.executable, "-m", "depth.cli", "card", lineage[2], "--output",
                          tmp_path / "README.md"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    text = (tmp_path / "README.md").read_text()
    assert text.startswith("---\n") and text.endswith("---\n")
    meta = yaml.safe_load(text.strip("-\n"))
    record = read_provenance(lineage[2])
    co2 = meta["co2_eq_emissions"]
    assert co2["emissions"] == pytest.approx(record.carbon["kg_co2eq"] * 1000, abs=1e-6)
    assert co2["training_type"] == "fine-tuning"  # C has a parent
    assert "world-average" in co2["source"] and co2["hardware_used"]
    assert meta["depth"]["depth_joules"] == pytest.approx(record.depth_joules)
    assert meta["depth"]["train_joules"] == pytest.approx(record.train_joules)
    assert meta["depth"]["record_sha256"] == record.record_sha256
    a = subprocess.run([sys.executable, "-m", "depth.cli", "card", lineage[0]],
                       capture_output=True, text=True, timeout=120)
    assert yaml.safe_load(a.stdout.strip("-\n"))["co2_eq_emissions"]["training_type"] == \
        "pre-training"
