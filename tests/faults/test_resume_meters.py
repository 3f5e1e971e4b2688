"""A fit resumed with another meter (an estimate, then NVML): each segment keeps its method,
the record names both, is not "measured", and weighs both methods' uncertainty."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from depth import DepthCallback
from depth.meters.estimate import EstimateMeter
from depth.meters.nvml import NvmlCounterMeter
from depth.record.card import card_yaml
from depth.record.provenance import provenance_from_checkpoint
from depth.record.uncertainty import RELATIVE_BOUNDS
from tests.doubles.pynvml_double import FakeGpu, FakeNvml
from tests.support.lightning_models import TinyLM, loader


class GpuLoad(Callback):
    """The simulated GPU draws 50 J per batch (its energy counter, faked, advances)."""

    def __init__(self, gpu: FakeGpu):
        self.gpu = gpu

    def on_train_batch_start(self, *args) -> None:
        self.gpu.energy_mj += 50_000.0


def fit(root: Path, meter, steps: int, ckpt_path: str | None = None, extra=()) -> Path:
    trainer = pl.Trainer(callbacks=[*extra, DepthCallback(meter, tracking=False,
                                                          sidecar=False)],
                         logger=False, max_steps=steps, default_root_dir=root,
                         enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", devices=1)
    trainer.fit(TinyLM(), loader(n=64), ckpt_path=ckpt_path)
    return Path(trainer.checkpoint_callback.best_model_path)


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume-meters")
    estimate = EstimateMeter(tdp_w=100.0, ram_power_w=5.0, cpu_load=lambda: 1.0)
    first = fit(root / "a", estimate, steps=3)
    estimate.close()
    gpu = FakeGpu()
    nvml = NvmlCounterMeter([0], nvml=FakeNvml([gpu]), visible_devices=None)
    second = fit(root / "b", nvml, steps=6, ckpt_path=str(first), extra=[GpuLoad(gpu)])
    nvml.close()
    return provenance_from_checkpoint(first), provenance_from_checkpoint(second)


def test_each_segment_keeps_its_method(resumed):
    _, record = resumed
    fits = [s for s in record.segments if s["kind"] == "fit"]
    assert [s["method"] for s in fits] == ["estimate", "nvml-counter"]
    assert fits[0]["methods"] == {"cpu:0": "estimate", "dram:0": "estimate"}
    assert fits[1]["methods"] == {"gpu:0": "nvml-counter"}


def test_the_record_names_every_method_and_is_not_measured(resumed):
    first, record = resumed
    assert first.method == "estimate"
    assert record.method == "estimate+nvml-counter" and record.measured is False
    assert "estimate:" in record.known_error and "nvml-counter:" in record.known_error
    card = card_yaml(record)
    assert "method: estimate+nvml-counter" in card and "measured: false" in card
    assert "ESTIMATED" in card


def test_the_uncertainty_weighs_both_methods_by_their_joules(resumed):
    _, record = resumed
    fits = [s for s in record.segments if s["kind"] == "fit"]
    estimate_j, nvml_j = fits[0]["joules"], fits[1]["joules"]
    assert estimate_j > 0 and nvml_j == pytest.approx(3 * 50.0, rel=0.4)
    expected = (RELATIVE_BOUNDS["estimate"][0] * estimate_j
                + RELATIVE_BOUNDS["nvml-counter"][0] * nvml_j) / (estimate_j + nvml_j)
    assert record.uncertainty["relative"] == pytest.approx(expected)
    assert set(record.uncertainty["per_method"]) == {"estimate", "nvml-counter"}
