"""The energy figures in a user's own progress bar: a real Trainer, its TQDM bar, a CSVLogger."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, RichProgressBar, TQDMProgressBar
from pytorch_lightning.loggers import CSVLogger

from depth import DepthCallback
from depth.lightning.progress_bar import FIGURES, compact
from tests.doubles.meters import ClockMeter
from tests.support.lightning_models import TinyLM, loader

TRAINER = dict(enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu",
               devices=1, max_epochs=1)


class BarWatcher(Callback):
    """What the bar would draw after each batch (`trainer.progress_bar_metrics`)."""

    def __init__(self) -> None:
        self.seen: list[str | None] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seen.append(trainer.progress_bar_metrics.get("J"))


def fit(tmp_path: Path, callback: DepthCallback, *extra: Callback, **kwargs) -> pl.Trainer:
    trainer = pl.Trainer(callbacks=[callback, *extra], logger=CSVLogger(tmp_path, name="csv"),
                         default_root_dir=tmp_path, **{**TRAINER, **kwargs})
    trainer.fit(TinyLM(step_sleep_s=0.002), loader(n=40))
    return trainer


def csv_header_and_rows(trainer: pl.Trainer) -> tuple[list[str], list[dict[str, str]]]:
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def test_a_users_tqdm_bar_shows_joules_watts_and_tokens_per_wh_not_logged_twice(tmp_path,
                                                                                 capsys):
    callback = DepthCallback(ClockMeter({"gpu:0": 250.0}), flush_interval_s=0.001,
                             tracking=False, sidecar=False)
    trainer = fit(tmp_path, callback, TQDMProgressBar())
    shown = trainer.progress_bar_metrics
    figures = callback.progress()
    assert set(FIGURES) <= set(shown)
    assert shown["J"] == compact(figures["J"]) and shown["W"] == compact(figures["W"])
    assert shown["tok/Wh"] == compact(figures["tok/Wh"])
    rendered = capsys.readouterr().out  # Lightning's TQDM bars draw on stdout
    number = r"[0-9.]+[kMGT]?"
    assert re.search(rf"J={number}, W={number}, tok/Wh={number}", rendered), rendered[-500:]
    header, rows = csv_header_and_rows(trainer)
    assert not set(FIGURES) & set(header)  # drawn only, never logged
    energy_rows = [r for r in rows if r.get("energy/joules")]
    assert len(energy_rows) == trainer.global_step  # the sinks' points, once each
    assert float(energy_rows[-1]["energy/joules"]) == pytest.approx(figures["J"], abs=0.1)


def test_the_rich_bar_draws_the_same_entries(tmp_path, capsys):
    pytest.importorskip("rich")
    callback = DepthCallback(ClockMeter(), flush_interval_s=0.001, tracking=False,
                             sidecar=False)
    bar = RichProgressBar()
    trainer = fit(tmp_path, callback, bar)
    metrics = bar.get_metrics(trainer, trainer.lightning_module)
    assert metrics["J"] == compact(callback.progress()["J"])
    rendered = "".join(capsys.readouterr().out.split())  # Rich wraps the line
    number = r"[0-9.]+[kMGT]?"
    assert re.search(rf"J:{number}W:{number}tok/Wh:{number}", rendered), rendered[-500:]


def test_the_bar_changes_only_when_points_are_settled(tmp_path):
    # a flush interval longer than the fit: no point is settled until the fit ends, so the
    # per-step hook never touches the bar; the end settles them and the bar shows them
    watcher = BarWatcher()
    callback = DepthCallback(ClockMeter(), flush_interval_s=3600.0, tracking=False,
                             sidecar=False)
    trainer = fit(tmp_path, callback, watcher)
    assert watcher.seen and set(watcher.seen) == {None}
    assert trainer.progress_bar_metrics["J"] == compact(callback.progress()["J"])
    # settled at every step: the bar follows them
    watcher = BarWatcher()
    fit(tmp_path / "often", DepthCallback(ClockMeter(), flush_interval_s=0.001,
                                          tracking=False, sidecar=False), watcher)
    assert len({j for j in watcher.seen if j is not None}) > 1


def test_progress_bar_false_leaves_the_bar_alone(tmp_path, capsys):
    callback = DepthCallback(ClockMeter(), flush_interval_s=0.001, tracking=False,
                             sidecar=False, progress_bar=False)
    trainer = fit(tmp_path, callback, TQDMProgressBar())
    assert callback.progress()  # measured all the same
    assert not set(FIGURES) & set(trainer.progress_bar_metrics)
    rendered = capsys.readouterr().out
    assert "it/s" in rendered and "tok/Wh=" not in rendered and "J=" not in rendered


def test_no_bar_no_entries(tmp_path):
    callback = DepthCallback(ClockMeter(), flush_interval_s=0.001, tracking=False,
                             sidecar=False)
    trainer = fit(tmp_path, callback, enable_progress_bar=False)
    assert not set(FIGURES) & set(trainer.progress_bar_metrics)


def test_progress_bar_must_be_a_bool():
    with pytest.raises(TypeError, match="progress_bar must be True or False"):
        DepthCallback(ClockMeter(), progress_bar="no")


@pytest.mark.parametrize("value, text", [(0.0, "0"), (12.34, "12.3"), (812.4, "812"),
                                         (999.6, "1k"), (12_345.0, "12.3k"),
                                         (4_560_000.0, "4.56M"), (2.5e12, "2.5T")])
def test_compact_numbers(value, text):
    assert compact(value) == text
