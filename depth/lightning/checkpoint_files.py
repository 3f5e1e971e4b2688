"""Which file a checkpoint's record went into, found after Lightning wrote it.

Lightning has no hook after a checkpoint file is written, so with
``DepthCallback(log_checkpoints=True)`` each record is remembered at ``on_save_checkpoint``
and its file is found at the next hook: among the paths the ``ModelCheckpoint`` callbacks
report, those modified after the record was made, paired with the records in order.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytorch_lightning as pl

from depth.lightning.sinks import Sinks


def checkpoint_dir(trainer: pl.Trainer) -> Path | None:
    """The folder this fit's checkpoints go to (where its crash sidecar belongs, so that a
    resume from one of them finds it), else the folder of the checkpoint it resumed from."""
    dirpath = getattr(trainer.checkpoint_callback, "dirpath", None)
    if dirpath:
        return Path(dirpath)
    return Path(trainer.ckpt_path).parent if trainer.ckpt_path else None


class CheckpointFiles:
    """Records waiting for their checkpoint file, and the upload of each file found."""

    def __init__(self) -> None:
        self.awaiting: list[tuple[str, int, float]] = []  # (record digest, step, time)

    def expect(self, record_sha256: str, step: int) -> None:
        """A record was just made; its file is written after this hook returns."""
        self.awaiting.append((record_sha256, step, time.time()))

    def publish(self, trainer: pl.Trainer, sinks: Sinks, warn: Callable[[str], None],
                final: bool = False) -> None:
        """Queues the upload of the files written since their records were made; at the
        `final` call, says how many records never got a file (``trainer.save_checkpoint``)."""
        if not self.awaiting:
            return
        since = self.awaiting[0][2] - 0.01
        paths = {p for cb in trainer.checkpoint_callbacks
                 for p in (getattr(cb, "best_model_path", ""), getattr(cb, "last_model_path", ""),
                           *getattr(cb, "best_k_models", {}))
                 if p}
        fresh = []
        for path in paths:
            try:
                mtime = os.stat(path).st_mtime
            except OSError:
                continue
            if mtime >= since and not os.path.islink(path):
                fresh.append((mtime, str(path)))
        fresh.sort()
        for (_, path), (digest, step, _) in zip(fresh, self.awaiting):
            sinks.publish_file(path, digest, step)
        self.awaiting = self.awaiting[min(len(fresh), len(self.awaiting)):]
        if final and self.awaiting:
            warn(f"{len(self.awaiting)} checkpoint(s) were saved without a ModelCheckpoint "
                 "(trainer.save_checkpoint): their files are not uploaded; their records are")
            self.awaiting = []
