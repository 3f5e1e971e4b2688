"""One fit of a team member, in its own process (the load test and
scripts/bench_tracking_load.py run several at once against one tracking server).

TinyLM with a fixed sleep per step, DepthCallback writing one point per step to its own
run at ``MLFLOW_TRACKING_URI`` (credentials from the environment or in the URI), a
checkpoint (and so a LoggedModel) every `--every-n-steps`. Writes ``summary.json`` in
`--dir`: the fit's wall time, the run id and the LoggedModels depth created.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pytorch_lightning as pl  # noqa: E402
from pytorch_lightning.callbacks import ModelCheckpoint  # noqa: E402

from depth import DepthCallback  # noqa: E402
from tests.doubles.meters import ClockMeter  # noqa: E402
from tests.support.lightning_models import TinyLM, loader  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--sleep", type=float, default=0.05, help="seconds per training step")
    p.add_argument("--every-n-steps", type=int, default=5, help="checkpoint interval")
    p.add_argument("--experiment", default="load")
    p.add_argument("--no-tracking", action="store_true", help="the baseline: no MLflow")
    p.add_argument("--go", default=None, help="write DIR/ready, then start once this file "
                   "exists (concurrent fits start together, imports done)")
    args = p.parse_args()
    root = Path(args.dir)
    if args.go:
        (root / "ready").touch()
        while not Path(args.go).exists():
            time.sleep(0.02)
    callback = DepthCallback(ClockMeter({"gpu:0": 100.0}), experiment_name=args.experiment,
                             tracking=not args.no_tracking)
    trainer = pl.Trainer(
        max_steps=args.steps, logger=False, default_root_dir=root, accelerator="cpu",
        devices=1, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0,
        callbacks=[callback, ModelCheckpoint(dirpath=root / "ckpt", save_top_k=-1,
                                             every_n_train_steps=args.every_n_steps)])
    t0 = time.perf_counter()
    trainer.fit(TinyLM(step_sleep_s=args.sleep), loader(n=4 * args.steps))
    fit_s = time.perf_counter() - t0
    # The own run's writer finishes after fit returns (depth.tracking.handoff): the fit's
    # time above is what training paid; wait here so the run is complete when we exit.
    tracking_done = callback.wait_for_tracking()
    writer_s = time.perf_counter() - t0 - fit_s
    own_run = callback.sinks.own_run
    (root / "summary.json").write_text(json.dumps({
        "fit_s": fit_s, "writer_after_fit_s": writer_s, "tracking_done": tracking_done,
        "steps": trainer.global_step,
        "run_id": own_run[1] if own_run else None,
        "logged_models": callback.logged_models}))


if __name__ == "__main__":
    main()
