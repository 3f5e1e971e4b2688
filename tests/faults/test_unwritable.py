"""A crash sidecar that cannot be written: a warning, training goes on, the record says so."""

from __future__ import annotations

import warnings

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from depth import DepthCallback
from tests.doubles.meters import ClockMeter
from tests.support.lightning_models import TinyLM, loader


def test_failing_sidecar_writes_warn_once_and_are_recorded(tmp_path):
    ckpt = tmp_path / "ckpt"
    (ckpt / "depth-ledger.json").mkdir(parents=True)  # a folder where the file must go
    callback = DepthCallback(ClockMeter(), tracking=False, sidecar_interval_s=0.05)
    trainer = pl.Trainer(callbacks=[callback, ModelCheckpoint(dirpath=ckpt, save_last=True)],
                         logger=False, max_steps=6, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1,
                         default_root_dir=tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(TinyLM(step_sleep_s=0.02), loader(n=40))
    sidecar_warnings = [w for w in caught if "crash sidecar" in str(w.message)]
    assert len(sidecar_warnings) == 1 and "training goes on" in str(sidecar_warnings[0].message)
    record = torch.load(ckpt / "last.ckpt", weights_only=True)["depth"]
    assert record["optimizer_steps"] == 6  # training went on, and was measured
    assert any("crash sidecar" in flag for flag in record["flags"])
