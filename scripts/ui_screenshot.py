"""Screenshots of the MLflow UI showing a trained model's depth (docs/img/*.png).

Usage:
    python scripts/ui_screenshot.py [--out docs/img] [--keep STORE_DIR]

Trains a tiny model with DepthCallback and an MLFlowLogger on a fresh SQLite store
(checkpoints every 4 steps: three LoggedModels), starts ``mlflow server`` on 127.0.0.1,
and takes headless Chromium screenshots (Debian's ``chromium``) of the run page and of
the experiment's models view. Look at them: the depth tags and values must be visible.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--hide-scrollbars", "--window-size=1600,1100",
                  "--virtual-time-budget=20000"]


def train(store: Path) -> tuple[str, str, str]:
    """A tiny model trained with DepthCallback; returns (experiment id, run id, model id)."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.loggers import MLFlowLogger

    from depth import DepthCallback
    from tests.doubles.meters import ClockMeter
    from tests.support.lightning_models import TinyLM, loader

    logger = MLFlowLogger(experiment_name="depth-demo", run_name="tiny-lm",
                          tracking_uri=f"sqlite:///{store}/mlflow.db",
                          artifact_location=str(store / "artifacts"))
    callback = DepthCallback(ClockMeter({"gpu:0": 250.0, "cpu:0": 40.0}), tracking=False)
    checkpoints = ModelCheckpoint(dirpath=store / "ckpt", every_n_train_steps=4, save_top_k=-1)
    trainer = pl.Trainer(callbacks=[callback, checkpoints], logger=logger, max_steps=12,
                         enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", devices=1, default_root_dir=store)
    trainer.fit(TinyLM(step_sleep_s=0.05), loader(n=200))
    experiment_id = logger.experiment.get_run(logger.run_id).info.experiment_id
    return experiment_id, logger.run_id, callback.logged_models[-1][1]


def shoot(url: str, path: Path) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                        f"--screenshot={path}", url], check=True, capture_output=True,
                       timeout=120)
    print(f"wrote {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/img"))
    parser.add_argument("--keep", type=Path, default=None, help="store folder to keep")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    from tests.support.mlflow_server import mlflow_server

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        store = args.keep or Path(tmp)
        experiment_id, run_id, model_id = train(store)
        with mlflow_server(store / "ui", backend=f"sqlite:///{store}/mlflow.db") as uri:
            base = f"{uri}/#/experiments/{experiment_id}"
            mode = "?workflowType=machine_learning"  # the UI's "Model training" view
            shoot(f"{base}/runs/{run_id}{mode}", args.out / "mlflow-run.png")
            shoot(f"{base}/models{mode}", args.out / "mlflow-models.png")
            shoot(f"{base}/models/{model_id}{mode}", args.out / "mlflow-logged-model.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
