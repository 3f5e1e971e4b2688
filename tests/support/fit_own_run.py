"""Fits TinyLM with DepthCallback's default own run (no MLFlowLogger) in a fresh process,
as a user's script does, and exits at once: the own-run writer tests.

Prints one JSON line after ``fit`` returns: whether MLflow was imported here, the fit's
seconds, the writer process's pid, and the spool folder. ``--kill-writer`` kills the
writer process (SIGKILL) as soon as ``fit`` has returned.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
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
    p.add_argument("--max-steps", type=int, default=6)
    p.add_argument("--kill-writer", action="store_true")
    args = p.parse_args()
    root = Path(args.dir)
    callback = DepthCallback(ClockMeter(), experiment_name="background")
    every = ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=3, save_top_k=-1,
                            filename="{step}")
    trainer = pl.Trainer(callbacks=[callback, every], logger=False, default_root_dir=root,
                         max_steps=args.max_steps, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1)
    t0 = time.perf_counter()
    trainer.fit(TinyLM(), loader(n=40))
    fit_s = time.perf_counter() - t0
    writer = callback.sinks._own_writers[-1]._proc  # the test watches it after this exits
    if args.kill_writer:
        os.kill(writer.pid, signal.SIGKILL)
    print(json.dumps({"mlflow_imported": "mlflow" in sys.modules, "fit_s": fit_s,
                      "writer_pid": writer.pid, "spool": str(root / "depth-spool")}),
          flush=True)


if __name__ == "__main__":
    main()
