"""What the callback's per-step hooks cost, counted in Python functions run (deterministic,
unlike a timing on a shared machine), and the optimizer-step counter they read."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytorch_lightning as pl

from depth import DepthCallback
from depth.lightning.steps import step_counter
from tests.doubles.meters import ClockMeter
from tests.support.lightning_models import TinyLM, loader

METER_FILE = str(Path(__file__).resolve().parents[1] / "doubles" / "meters.py")


class Counted(DepthCallback):
    """Counts the Python functions entered inside the two per-step hooks (the meter's own
    excluded: that is the hardware's cost, not depth's), per optimizer step."""

    def __init__(self, meter: Any) -> None:
        super().__init__(meter, tracking=False, sidecar=False, flush_interval_s=3600.0)
        self.calls_per_step: list[int] = []
        self._calls = 0

    def _profile(self, frame: Any, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code.co_filename != METER_FILE:
            self._calls += 1

    def _counted(self, hook: Any, *args: Any) -> None:
        sys.setprofile(self._profile)
        try:
            hook(*args)
        finally:
            sys.setprofile(None)

    def on_train_batch_start(self, *args: Any) -> None:
        self._calls = 0
        self._counted(super().on_train_batch_start, *args)

    def on_train_batch_end(self, *args: Any) -> None:
        self._counted(super().on_train_batch_end, *args)
        self.calls_per_step.append(self._calls - 2)  # less the two hooks' own frames


def calls_per_step(tmp_path: Path, devices: int) -> float:
    cb = Counted(ClockMeter({f"gpu:{i}": 100.0 for i in range(devices)}))
    trainer = pl.Trainer(callbacks=[cb], logger=False, max_steps=12, default_root_dir=tmp_path,
                         enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, accelerator="cpu", devices=1)
    trainer.fit(TinyLM(), loader(n=48))
    return statistics.median(cb.calls_per_step[1:])


@pytest.mark.parametrize("devices", [1, 4])
def test_a_step_runs_a_handful_of_functions_and_none_per_device(tmp_path, devices):
    # An ordinary step (no flush), beyond the two hooks: the ledger's open check, counting
    # the batch's tokens (3: a dict batch is looked at, then its input_ids), the read
    # through `Ranks` and the reader (2), the queue's append. No property chain for the
    # step count, nothing per device: the reading's checks run inline.
    assert calls_per_step(tmp_path, devices) <= 8


def test_the_step_counter_is_global_step_at_every_batch(tmp_path):
    seen: list[tuple[int, int]] = []

    class Watch(pl.Callback):
        def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
            self.count = step_counter(trainer)

        def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
            seen.append((self.count(), trainer.global_step))

    for model, accumulate in ((TinyLM(), 3), (TinyLM(manual_every=2), 1)):
        seen.clear()
        trainer = pl.Trainer(callbacks=[Watch()], logger=False, max_steps=5,
                             accumulate_grad_batches=accumulate, default_root_dir=tmp_path,
                             enable_progress_bar=False, enable_model_summary=False,
                             enable_checkpointing=False, accelerator="cpu", devices=1)
        trainer.fit(model, loader(n=64))
        assert [c for c, _ in seen] == [g for _, g in seen] and seen[-1][0] == 5


def test_the_step_counter_reads_the_property_where_lightnings_loops_differ():
    trainer = SimpleNamespace(global_step=7)  # no fit_loop: another Lightning's shape
    count = step_counter(trainer)  # type: ignore[arg-type]
    trainer.global_step = 8
    assert count() == 8
