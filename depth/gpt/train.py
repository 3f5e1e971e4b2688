"""`depth train`: a recipe trained with `DepthCallback`, MLflow and checkpoints.

Framework wiring only; the model, data and options live in `depth.gpt` and
`depth.gpt.recipe`.
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint, TQDMProgressBar

from depth.gpt.recipe import Recipe
from depth.lightning.callback import DepthCallback
from depth.tracking.store import redact, unreachable, urls_unprinted


class DepthProgressBar(TQDMProgressBar):
    """Lightning's progress bar without the logger's version number: the loss beside the
    energy figures the `DepthCallback` puts in ``trainer.progress_bar_metrics``."""

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


@dataclass
class TrainResult:
    """What a `train` call produced and measured.

    Attributes:
        checkpoint: The last checkpoint written.
        record: Its depth record (`Provenance.to_dict`).
        tracking_uri: The MLflow store, or ``None`` without MLflow.
        run_id: The MLflow run.
        wall_s: Seconds of ``trainer.fit``.
        tokens_per_s: Training tokens per second over the fit.
        flops_per_token: Training FLOPs per token of the model (6N + attention).
        parameters: The model's parameters (tied weights once).
        val_loss: The last validation loss (nats per token), if validated.
    """

    checkpoint: str
    record: dict[str, Any]
    tracking_uri: str | None
    run_id: str | None
    wall_s: float
    tokens_per_s: float
    flops_per_token: float
    parameters: int
    val_loss: float | None


def _accelerator(recipe: Recipe) -> str:
    if recipe.train.accelerator == "gpu" and not torch.cuda.is_available():
        raise ValueError("train.accelerator is gpu but no CUDA GPU is visible; use auto or cpu")
    return recipe.train.accelerator


def _out_dir(recipe: Recipe) -> Path:
    """``train.out_dir``, created, once it is known to take files (not after the fit)."""
    out = Path(recipe.train.out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        raise ValueError(f"train.out_dir {out}: cannot write there "
                         f"({err.strerror or err}); give a writable folder") from None
    return out


def _parent_file(recipe: Recipe) -> Path | None:
    """``init_from``, when it is a file (its record is checked when it is loaded)."""
    if not recipe.init_from:
        return None
    path = Path(recipe.init_from)
    if path.is_dir():
        raise ValueError(f"init_from {path} is a directory; give the parent's checkpoint "
                         "file (.ckpt)")
    if not path.is_file():
        raise ValueError(f"init_from {path}: no such file; give the parent's checkpoint file")
    return path


def _logger(recipe: Recipe) -> Any:
    """An MLFlowLogger on the recipe's store, or ``None`` when tracking is off or its
    server is down (the callback then spools what it would have written)."""
    from depth.tracking.store import artifacts_beside, default_tracking_uri, prepare_store

    if not recipe.tracking.enabled:
        return None
    uri = recipe.tracking.tracking_uri or default_tracking_uri()
    if unreachable(uri) is not None:
        return None
    from pytorch_lightning.loggers import MLFlowLogger

    prepare_store(uri)  # a new SQLite store made here, not raced by the writer process

    return MLFlowLogger(experiment_name=recipe.tracking.experiment_name, tracking_uri=uri,
                        run_name=recipe.tracking.run_name or recipe.name,
                        artifact_location=artifacts_beside(uri))


def _hyperparameters(recipe: Recipe) -> dict[str, Any]:
    """The recipe as the checkpoint's (and the MLflow run's) hyperparameters, with any
    ``user:password@`` in its tracking URI redacted: both outlive the training."""
    values = asdict(recipe)
    if values["tracking"]["tracking_uri"]:
        values["tracking"]["tracking_uri"] = redact(values["tracking"]["tracking_uri"])
    return values


@contextmanager
def _default_store(recipe: Recipe) -> Iterator[None]:
    """The recipe's tracking URI as ``MLFLOW_TRACKING_URI`` while it trains: without an
    ``MLFlowLogger`` (its server down at the start), the callback opens its run, or spools
    for it, on the default store, which must be the recipe's and not the shell's."""
    uri = recipe.tracking.tracking_uri
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        with urls_unprinted(uri or ""):  # MLflow prints the run's URL, password and all
            yield
    finally:
        if uri and previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        elif uri:
            os.environ["MLFLOW_TRACKING_URI"] = previous


def train(recipe: Recipe, callbacks: list[Any] | None = None,
          datamodule: pl.LightningDataModule | None = None) -> TrainResult:
    """Trains `recipe` (with any extra Lightning `callbacks`); returns the checkpoint, its
    record and the measured throughput.

    Args:
        recipe: What to train.
        callbacks: More Lightning callbacks.
        datamodule: Data other than the recipe's (batches of ``{"input_ids", "labels"}``,
            B x T); for benchmarks on machines without `datasets`.
    """
    from depth.gpt.data import GPTDataModule
    from depth.gpt.module import GPTModule
    from depth.record.digest import CHECKPOINT_KEY

    pl.seed_everything(recipe.train.seed, verbose=False)
    if recipe.train.torch_threads:
        torch.set_num_threads(recipe.train.torch_threads)
    accelerator = _accelerator(recipe)
    out = _out_dir(recipe)
    parent = _parent_file(recipe)
    data = datamodule or GPTDataModule(recipe.data, recipe.model.block_size,
                                       recipe.train.batch_size)
    data.setup("fit")
    vocab_size = getattr(data, "vocab_size", None) or recipe.model.vocab_size
    if recipe.model.vocab_size < vocab_size:
        raise ValueError(f"model.vocab_size must be >= {vocab_size} for tokenizer "
                         f"{recipe.data.tokenizer!r}; got {recipe.model.vocab_size}")
    module = GPTModule(recipe.model, recipe.optim)
    module.save_hyperparameters({"recipe": _hyperparameters(recipe)})
    if parent is not None:
        from depth.record.lineage import load_parent_weights

        try:
            load_parent_weights(module, parent)
        except (OSError, ValueError) as err:
            raise ValueError(f"init_from: {err}") from None
    depth = recipe.depth
    callback = DepthCallback(depth.meter, sync=depth.sync,
                             log_every_n_steps=depth.log_every_n_steps,
                             log_checkpoints=depth.log_checkpoints,
                             country_iso_code=depth.country_iso_code, region=depth.region,
                             pue=depth.pue, experiment_name=recipe.tracking.experiment_name,
                             tracking=recipe.tracking.enabled)
    checkpoints = ModelCheckpoint(dirpath=out / "checkpoints", filename="{step}",
                                  every_n_train_steps=recipe.train.val_every_n_steps,
                                  save_top_k=1)  # the latest
    callbacks = [callback, checkpoints, *(callbacks or [])]
    if recipe.train.progress_bar:
        callbacks.append(DepthProgressBar(refresh_rate=max(1, recipe.train.log_every_n_steps)))
    logger = _logger(recipe)
    trainer = pl.Trainer(
        max_steps=recipe.train.max_steps, accelerator=accelerator, devices=recipe.train.devices,
        precision=recipe.train.precision, callbacks=callbacks, logger=logger or False,
        accumulate_grad_batches=recipe.train.accumulate_grad_batches,
        gradient_clip_val=recipe.train.gradient_clip_val,
        val_check_interval=min(recipe.train.val_every_n_steps, recipe.train.max_steps)
        * recipe.train.accumulate_grad_batches,
        check_val_every_n_epoch=None, limit_val_batches=recipe.train.val_batches,
        num_sanity_val_steps=0, log_every_n_steps=recipe.train.log_every_n_steps,
        default_root_dir=out, enable_progress_bar=recipe.train.progress_bar,
        enable_model_summary=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        t0 = time.perf_counter()
        with _default_store(recipe):
            trainer.fit(module, datamodule=data)
        wall_s = time.perf_counter() - t0
    from depth.record.checkpoint_io import load_checkpoint

    uri, run_id = ((logger._tracking_uri, logger.run_id) if logger is not None
                   else callback.own_run or (None, None))
    path = checkpoints.best_model_path
    record = load_checkpoint(Path(path))[CHECKPOINT_KEY] if path else None
    if record is None or record["optimizer_steps"] < trainer.global_step:
        # max_steps is not a multiple of the checkpoint interval: save the end too. The
        # callback's writers are closed by now, so its record is published here.
        path = str(out / "checkpoints" / f"step={trainer.global_step}.ckpt")
        trainer.save_checkpoint(path)
        record = load_checkpoint(Path(path))[CHECKPOINT_KEY]
        if run_id is not None and unreachable(uri) is None:
            from depth.tracking.publish import publish_checkpoint, publish_checkpoint_file
            from depth.tracking.store import store_client

            client = store_client(uri)
            model_id = publish_checkpoint(client, run_id, record, trainer.global_step)
            callback.logged_models.append((trainer.global_step, model_id))
            if depth.log_checkpoints:
                publish_checkpoint_file(client, run_id, path, record["record_sha256"])
    callback.wait_for_tracking()  # the summary names a run that has all of it
    tokens = record["segments"][-1].get("tokens") or 0
    val = trainer.callback_metrics.get("val/loss")
    return TrainResult(checkpoint=str(path), record=record, tracking_uri=uri, run_id=run_id,
                       wall_s=wall_s, tokens_per_s=tokens / wall_s if wall_s > 0 else 0.0,
                       flops_per_token=module.flops_per_token(training=True),
                       parameters=sum(p.numel() for p in module.parameters()),
                       val_loss=float(val) if val is not None else None)
