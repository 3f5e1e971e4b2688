"""`DepthCallback`: cumulative joules per optimizer step, embedded in every checkpoint.

Lightning's hooks over the stages: meters read through `lightning.ranks`, joules accounted
by `accounting.ledger`, points sent by `lightning.sinks`, records sealed by `record`, the
crash sidecar kept by `lightning.sidecar`. An optimizer step has ended when ``global_step``
advanced. The per-step hook only reads the meter and queues the reading (`Ledger.queue`).
"""

from __future__ import annotations

import time
import warnings
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from depth.accounting.ledger import Ledger
from depth.accounting.progress import FitProgress
from depth.accounting.tokens import token_counter
from depth.lightning.checkpoint_files import CheckpointFiles, checkpoint_dir
from depth.lightning.facts import config_sha256, parent_of
from depth.lightning.options import CallbackOptions
from depth.lightning.progress_bar import show_figures
from depth.lightning.ranks import Observation, Ranks, meter_for_rank
from depth.lightning.sidecar import CrashSidecar, recover_wasted_work
from depth.lightning.sinks import Sinks
from depth.lightning.steps import step_counter
from depth.meters import EnergyMeter
from depth.record.binding import check_resume
from depth.record.build import build_provenance
from depth.record.digest import CHECKPOINT_KEY, weights_sha256
from depth.record.provenance import Provenance
from depth.record.signing import key_id, signing_key


def _warn(message: str) -> None:
    warnings.warn(f"depth: {message}", stacklevel=2)


class DepthCallback(Callback):
    """Logs cumulative joules at every optimizer step and embeds provenance in checkpoints.

    Args:
        meter: ``"auto"``, a name from `depth.meters.METER_NAMES`, or any `EnergyMeter`.
        log_every_n_steps, tokens_per_batch, sync, tracking, parent, ...: The fields of
            `depth.lightning.options.CallbackOptions`, each documented there.

    Metrics: ``energy/joules`` (whole history), ``energy/step_joules``, ``energy/watts``,
    ``energy/joules_per_token`` (when tokens are known), ``energy/joules/<device>``.
    """

    def __init__(
        self,
        meter: EnergyMeter | str = "auto",
        *,
        log_every_n_steps: int = 1,
        tokens_per_batch: int | Callable[[Any], int] | None = None,
        sync: str = "none",
        log_per_device: bool | None = None,
        sidecar: bool = True,
        sidecar_interval_s: float = 1.0,
        flush_interval_s: float = 1.0,
        max_lag_s: float = 1.0,
        mlflow_writer: str = "auto",
        tracking: bool = True,
        experiment_name: str = "depth",
        parent: str | Path | Mapping[str, Any] | None = None,
        country_iso_code: str | None = None,
        region: str | None = None,
        pue: float | None = None,
        log_checkpoints: bool = False,
        spool_dir: str | Path | None = None,
        tracking_retry_s: float = 30.0,
        progress_bar: bool = True,
    ):
        self.options = CallbackOptions(
            meter, log_every_n_steps, tokens_per_batch, sync, log_per_device, sidecar,
            sidecar_interval_s, flush_interval_s, max_lag_s, mlflow_writer, tracking,
            experiment_name, parent, country_iso_code, region, pue, log_checkpoints,
            spool_dir, tracking_retry_s, progress_bar)
        self._count_tokens = token_counter(tokens_per_batch)
        self.ledger = Ledger(max_lag_s=max_lag_s)
        self.sinks = Sinks(self.options)
        self.files = CheckpointFiles()
        self.fit_progress = FitProgress()
        self.meter: EnergyMeter | None = None
        self._owns_meter = False
        self.ranks: Ranks | None = None
        self.parent: dict[str, Any] | None = None
        self._baseline: list[Observation] = []
        self._sidecar: CrashSidecar | None = None
        self._intensity: dict[str, Any] | None = None  # the grid's, looked up once
        self._parameters, self._config_sha256 = None, None  # set at setup
        self._loaded: dict[str, Any] | None = None  # saved_unix and saved_at of a resume
        self._last_state: dict[str, Any] | None = None
        self._resume_record: tuple[Any] | None = None  # the record of the checkpoint resumed
        self._carried_flags: list[str] = []  # flags of the history a resume continues
        self._pending_tokens: int | None = 0
        self._last_step, self._status = 0, "FINISHED"  # how this fit's own run ends
        self._module: weakref.ref[pl.LightningModule] | None = None  # whose history this is
        self._emitted_s = 0.0  # monotonic time points were last taken from the ledger
        self._global_step: Callable[[], int] = int  # trainer.global_step, bound at the start

    state_key = property(lambda self: "DepthCallback")  # subclasses resume the same state

    own_run = property(lambda self: self.sinks.own_run, doc="""(tracking URI, run id) of the
        run this callback opened, if any (its writer process creates it: this waits).""")
    logged_models = property(lambda self: self.sinks.logged_models, doc="""(step, MLflow
        LoggedModel id) of every checkpoint published so far.""")

    def wait_for_tracking(self, timeout_s: float = 120.0) -> bool:
        """Waits until the run this callback opened has every point, record and its end
        (its writer finishes after ``fit`` returns); True once it has."""
        return self.sinks.wait(timeout_s)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if self._module is not None and self._module() is not pl_module:
            self._new_history()  # another model: its depth is not the last one's
        self._module, self._status = weakref.ref(pl_module), "FINISHED"
        self._parameters = sum(p.numel() for p in pl_module.parameters())
        self._config_sha256 = config_sha256(trainer, pl_module)
        if self._intensity is None:
            from depth.record.carbon import grid_intensity

            self._intensity = grid_intensity(self.options.country_iso_code, self.options.region)
        if self.parent is None:
            self.parent = parent_of(self.options.parent, pl_module)
        if self.meter is None:
            self.meter, self._owns_meter = meter_for_rank(self.options.meter, trainer)
        self.ranks = Ranks(trainer, self.meter, not isinstance(self.options.meter, str), _warn)
        self._baseline, _ = self.ranks.observe(tokens=None)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        ranks = self.ranks
        if ranks is None:
            return
        if self._loaded and trainer.ckpt_path:
            recover_wasted_work(Path(trainer.ckpt_path).parent, self.ledger, ranks,
                                self._loaded.get("saved_unix"), self._loaded.get("saved_at"))
        self.ledger.begin(trainer.global_step, self._baseline, ranks.method, ranks.hardware,
                          self.options.sync, methods=ranks.current_methods)
        self._last_step, self._pending_tokens, self._emitted_s = (trainer.global_step, 0,
                                                                  time.monotonic())
        self._global_step = step_counter(trainer)
        self.fit_progress = FitProgress()
        if trainer.is_global_zero:
            self.sinks.open(trainer)
        directory = checkpoint_dir(trainer)
        if self.options.sidecar and directory is not None:
            own = self._baseline[ranks.rank if len(self._baseline) > 1 else 0][1]
            self._sidecar = CrashSidecar(directory, self.ledger, ranks, own,
                                         lambda: self._last_step,
                                         self.options.sidecar_interval_s, self._sidecar_failed)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.files.awaiting:  # files saved at an earlier step (checkpoint callbacks run last)
            self.files.publish(trainer, self.sinks, _warn)
        ranks, ledger, options = self.ranks, self.ledger, self.options  # hot: locals
        if ranks is None or not ledger.is_open:
            return
        if ledger.tokens_known:  # once unknown, the fit has no token metrics
            tokens, pending = self._count_tokens(batch), self._pending_tokens
            self._pending_tokens = None if tokens is None or pending is None else pending + tokens
        step = self._global_step()
        if step == self._last_step:
            return  # a gradient-accumulation micro-batch: no optimizer step yet
        self._last_step = step
        log = step % options.log_every_n_steps == 0
        if ranks.world > 1 and not log:
            return  # ranks are combined only at log points; tokens keep accumulating
        if options.sync != "none" and (options.sync == "step" or log):
            ranks.synchronize()
        observations, tokens = ranks.observe(self._pending_tokens)
        self._pending_tokens = 0
        ledger.queue(step, observations, tokens, log)
        if observations[0][0] - self._emitted_s >= options.flush_interval_s:
            self._emit(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.files.awaiting:
            self.files.publish(trainer, self.sinks, _warn)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.ranks is None or not self.ledger.is_open:
            return
        self.ledger.end(self._final_observations(), flags=self._flags())
        self._emit(trainer)
        self.sinks.flush(wait=True)
        if self._sidecar is not None:  # kept until teardown: its failure is still a flag
            self._sidecar.stop(final_write=True)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        if self.ranks is None or not self.ledger.is_open:
            return  # not in a fit this callback measures
        self._status = "KILLED" if isinstance(exception, KeyboardInterrupt) else "FAILED"
        stopped = [*self._flags(), f"the fit stopped: {type(exception).__name__}"]
        self.ledger.end(self._final_observations(), flags=stopped)
        self._emit(trainer)
        self.sinks.flush(wait=True)
        self._stop_sidecar(final_write=True)
        self.teardown(trainer, pl_module, "fit")  # Lightning calls none after an exception

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.files.publish(trainer, self.sinks, _warn, final=True)
        self.sinks.close(self._status, global_zero=trainer.is_global_zero)
        self._stop_sidecar(final_write=False)
        if self._owns_meter and self.meter is not None:
            self.meter.close()
            self.meter = None

    def progress(self) -> dict[str, float]:
        """The energy figures the progress bar shows, as numbers (`FitProgress.figures`)."""
        return self.fit_progress.figures()

    def state_dict(self) -> dict[str, Any]:
        state = self.ledger.state_dict(self._final_observations() if self.ledger.is_open
                                       else None)
        state.update(flags=self._flags(), saved_unix=time.time(), parent=self.parent)
        self._last_state = state
        return state

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        self._resume_record = (checkpoint.get(CHECKPOINT_KEY),)  # checked in load_state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self._resume_record is not None:  # Lightning's resume: the record binds the state
            record, self._resume_record = self._resume_record[0], None
            self._carried_flags += check_resume(state_dict, record)  # the record's flags too
        else:  # earlier fits' flags stay in the record
            self._carried_flags += state_dict.get("flags") or []
        self.ledger.load_state_dict(state_dict)
        self._loaded = {k: state_dict.get(k) for k in ("saved_unix", "saved_at")}
        self.parent = self.parent or state_dict.get("parent")

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        if not (self.ledger.is_open or self.ledger.segments):
            return  # nothing measured (this callback never trained)
        state, self._last_state = self._last_state or self.state_dict(), None
        digest = (weights_sha256(checkpoint["state_dict"])
                  if trainer.is_global_zero and "state_dict" in checkpoint else None)
        record = self.provenance(state, digest).sealed(signing_key(), key_id())
        checkpoint[CHECKPOINT_KEY] = record
        step = int(state["optimizer_steps"])
        self.sinks.publish_checkpoint(record, step)
        if self.options.log_checkpoints and self.sinks:  # the file is written after this hook
            self.files.expect(record["record_sha256"], step)
        self.sinks.flush()

    def provenance(self, state: Mapping[str, Any], digest: str | None = None) -> Provenance:
        """The record for a ledger state (as saved at a checkpoint)."""
        facts = self.ranks.facts() if self.ranks else dict(methods={}, method="none", hardware={})
        return build_provenance(state, **facts, sync=self.options.sync, parent=self.parent,
                                parameters=self._parameters, config_sha256=self._config_sha256,
                                pue=self.options.pue, intensity=self._intensity,
                                weights_sha256=digest)

    def _emit(self, trainer: pl.Trainer) -> None:
        points = self.ledger.pop_points()
        self._emitted_s = time.monotonic()
        if not points:
            return
        self.fit_progress.add(points)
        show_figures(trainer, self.fit_progress.figures() if self.options.progress_bar else {})
        if trainer.is_global_zero and self.sinks:
            self.sinks.log(points, self.ranks.current_methods() if self.ranks else {})

    def _new_history(self) -> None:
        self.ledger, self.sinks = Ledger(self.options.max_lag_s), Sinks(self.options)
        self.parent, self._loaded, self._last_state, self._carried_flags = None, None, None, []

    def _final_observations(self) -> list[Observation]:
        assert self.ranks is not None
        return self.ranks.read_now(sync=self.options.sync != "none")

    def _flags(self) -> list[str]:
        flags = [*self._carried_flags, *(self.ranks.flags() if self.ranks is not None else [])]
        if self._sidecar is not None and self._sidecar.failed:
            flags.append(self._sidecar.failed)
        return list(dict.fromkeys(flags))

    def _sidecar_failed(self, message: str) -> None:
        _warn(f"{message}; training goes on, the record says so")
        self.ledger.add_flag(message)

    def _stop_sidecar(self, final_write: bool) -> None:
        if self._sidecar is not None:
            self._sidecar.stop(final_write=final_write)
            self._sidecar = None
