"""Trains TinyLM with DepthCallback in its own process (resume, SIGKILL and DDP tests).

Each rank's ClockMeter draws `--power` + 1000 x rank watts, so ranks are told apart.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pytorch_lightning as pl  # noqa: E402
from pytorch_lightning.callbacks import ModelCheckpoint  # noqa: E402
from pytorch_lightning.loggers import CSVLogger  # noqa: E402

from depth import DepthCallback  # noqa: E402
from tests.doubles.meters import ClockMeter  # noqa: E402
from tests.support.lightning_models import TinyLM, loader  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--max-steps", type=int, default=8)
    p.add_argument("--resume", default=None, help="checkpoint path, or 'last'")
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--power", type=float, default=100.0)
    p.add_argument("--every-n-steps", type=int, default=2)
    p.add_argument("--sidecar-interval", type=float, default=1.0)
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--shared-uuid", action="store_true")
    p.add_argument("--num-nodes", type=int, default=1)
    p.add_argument("--with-cpu", action="store_true", help="meter a cpu:0 too (per node)")
    args = p.parse_args()
    rank = int(os.environ.get("LOCAL_RANK", "0")) + int(os.environ.get("NODE_RANK", "0"))
    uuid = "GPU-same" if args.shared_uuid else f"GPU-{rank}"
    power = {"gpu:0": args.power + 1000.0 * rank, **({"cpu:0": 10.0} if args.with_cpu else {})}
    meter = ClockMeter(power, update_s=0.0, uuids={"gpu:0": uuid})
    callback = DepthCallback(meter, sidecar_interval_s=args.sidecar_interval, tracking=False)
    checkpoint = ModelCheckpoint(dirpath=os.path.join(args.dir, "ckpt"), save_top_k=-1,
                                 every_n_train_steps=args.every_n_steps, save_last=True)
    trainer = pl.Trainer(
        max_steps=args.max_steps, callbacks=[callback, checkpoint],
        logger=CSVLogger(args.dir, name="logs"), default_root_dir=args.dir,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        accelerator="cpu", devices=args.devices, num_nodes=args.num_nodes,
        strategy="ddp" if args.devices * args.num_nodes > 1 else "auto")
    trainer.fit(TinyLM(step_sleep_s=args.sleep), loader(n=400), ckpt_path=args.resume)
    if trainer.is_global_zero:
        summary = {"segments": [s.to_dict() for s in callback.ledger.segments],
                   "history_devices": callback.ledger.history_devices}
        Path(args.dir, f"summary-{os.getpid()}.json").write_text(json.dumps(summary))


if __name__ == "__main__":
    main()
