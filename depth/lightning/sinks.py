"""Who gets each energy point and record: the trainer's loggers, MLflow writers, the spool.

On rank zero only. An ``MLFlowLogger``'s run, or (without one) a run depth opens itself,
gets a writer off the training thread (`depth.tracking.writer_process` or
`depth.tracking.writer_thread`); a server that does not answer gets the spool instead, so
that nothing waits on it. Other Lightning loggers get the points through their own
``log_metrics`` (they buffer).
"""

from __future__ import annotations

import os
import secrets
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from depth.accounting.ledger import Point
from depth.accounting.reader import UNMEASURED
from depth.lightning.options import CallbackOptions
from depth.tracking.spool import Spool, SpoolSink
from depth.tracking.store import (default_tracking_uri, end_run, open_run, redact, redact_text,
                                  unreachable)


def is_mlflow_logger(logger: Any) -> bool:
    """True for Lightning's ``MLFlowLogger`` (both the ``lightning`` and the
    ``pytorch_lightning`` packages), without importing mlflow."""
    return type(logger).__name__ == "MLFlowLogger" and hasattr(logger, "run_id")


def tracking_uri_of(logger: Any) -> str:
    """The tracking URI an ``MLFlowLogger`` writes to."""
    uri = getattr(logger, "_tracking_uri", None)
    if uri:
        return str(uri)
    import mlflow

    return mlflow.get_tracking_uri()


def point_metrics(point: Point, per_device: bool) -> dict[str, float]:
    """The metrics of one point: ``energy/joules`` (whole history), ``energy/step_joules``,
    ``energy/watts``, ``energy/joules_per_token`` (when tokens are known), and
    ``energy/joules/<device>`` when `per_device`."""
    metrics = {"energy/joules": point.joules, "energy/step_joules": point.step_joules,
               "energy/watts": point.watts}
    if point.joules_per_token is not None:
        metrics["energy/joules_per_token"] = point.joules_per_token
    if per_device:
        metrics.update({f"energy/joules/{d}": j for d, j in point.devices.items()})
    return metrics


class DirectSink:
    """A Lightning logger other than MLflow: its own ``log_metrics`` (they buffer)."""

    def __init__(self, logger: Any):
        self.logger = logger

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.logger.log_metrics(dict(metrics), step=step)

    def flush(self, wait: bool = False) -> bool:
        save = getattr(self.logger, "save", None)
        if callable(save):
            save()
        return True

    def close(self) -> None:
        self.flush()


def _run_name() -> str:
    """A name unique to this run: MLflow's own draws from the global ``random``, which a
    seeded script resets, so every seeded run (and its LoggedModels) got the same name."""
    return f"depth-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def _warn(message: str) -> None:
    warnings.warn(f"depth: {message}", stacklevel=3)


class Sinks:
    """The sinks of one callback: opened at each fit's start, closed at its end.

    The run depth opens itself (without an ``MLFlowLogger``) is one run for every fit of
    the callback: `own_run` keeps it between fits.
    """

    def __init__(self, options: CallbackOptions):
        self.options = options
        self.own_run: tuple[str, str] | None = None  # (tracking URI, run id)
        self.logged_models: list[tuple[int, str]] = []  # (step, MLflow LoggedModel id)
        self._sinks: list[Any] = []
        self._own_spool: Spool | None = None

    def __bool__(self) -> bool:
        return bool(self._sinks)

    def _writer_kind(self, trainer: pl.Trainer) -> str:
        if self.options.mlflow_writer != "auto":
            return self.options.mlflow_writer
        spare_core = (os.cpu_count() or 1) > torch.get_num_threads()
        return "process" if trainer.strategy.root_device.type == "cuda" or spare_core else "thread"

    def _spool(self, trainer: pl.Trainer, uri: str, run_id: str | None) -> Spool:
        directory = self.options.spool_dir or Path(trainer.default_root_dir) / "depth-spool"
        return Spool(directory, uri, run_id, experiment_name=self.options.experiment_name)

    def open(self, trainer: pl.Trainer) -> None:
        """Makes this fit's sinks from the trainer's loggers (call on rank zero)."""
        from depth.tracking.writer_process import MetricWriterProcess
        from depth.tracking.writer_thread import BufferedMetricWriter

        options = self.options
        mlflow_loggers = [lg for lg in trainer.loggers if is_mlflow_logger(lg)]
        sinks: list[Any] = [DirectSink(lg) for lg in trainer.loggers if not is_mlflow_logger(lg)]
        targets: list[tuple[str, Any]] = [(tracking_uri_of(lg), lg) for lg in mlflow_loggers]
        if not mlflow_loggers and options.tracking:
            targets = [(self.own_run[0] if self.own_run else default_tracking_uri(), None)]
        down = {uri: why for uri in {u for u, _ in targets} if (why := unreachable(uri))}
        if not mlflow_loggers and targets and targets[0][0] not in down and self.own_run is None:
            uri = targets[0][0]
            try:  # one run for every fit of this callback
                self.own_run = open_run(options.experiment_name, run_name=_run_name(),
                                        tracking_uri=uri)
            except Exception as err:  # no permission on the experiment, a server error
                why = redact_text(" ".join(f"{type(err).__name__}: {err}".split()))[:300]
                down[uri] = f"it refused to open a run: {why}"
        for uri, logger in targets:
            if uri in down:  # nothing waits on the server: everything goes to the spool
                run_id = (getattr(logger, "_run_id", None) if logger is not None
                          else self.own_run[1] if self.own_run else None)
                spool = self._spool(trainer, uri, run_id)
                _warn(f"MLflow tracking server {redact(uri)} cannot be used ({down[uri]}); "
                      f"energy metrics and records are spooled to {spool.directory} (replay "
                      f"with `depth sync {spool.directory}`); checkpoints still carry their "
                      "records")
                sinks.append(SpoolSink(spool))
                continue
            run_id = logger.run_id if logger is not None else self.own_run[1]
            spool = self._spool(trainer, uri, run_id)
            if logger is None:
                self._own_spool = spool
            remote = uri.startswith(("http://", "https://"))  # fails fast only in a process
            if self._writer_kind(trainer) == "process" or (
                    options.mlflow_writer == "auto" and remote):
                sinks.append(MetricWriterProcess(uri, run_id, options.flush_interval_s, spool,
                                                 retry_s=options.tracking_retry_s))
            else:
                from mlflow import MlflowClient

                sinks.append(BufferedMetricWriter(MlflowClient(uri), run_id,
                                                  options.flush_interval_s, spool))
        self._sinks = sinks

    def log(self, points: Sequence[Point], methods: Mapping[str, str]) -> None:
        """Each point's metrics to every sink; per device too when there are several
        devices (unless ``log_per_device`` says otherwise).

        `methods` is how each device is read now: while no device has given a valid
        reading (``unmeasured``), no point is sent, since its 0 J would read as a
        measurement; a device not yet measured gets no per-device metric.
        """
        unmeasured = {d for d, m in methods.items() if m == UNMEASURED}
        if methods and len(unmeasured) == len(methods):
            return
        per_device = self.options.log_per_device
        if per_device is None:
            per_device = len(methods) > 1
        for point in points:
            metrics = point_metrics(point, per_device)
            for device in unmeasured if per_device else ():
                metrics.pop(f"energy/joules/{device}", None)
            for sink in self._sinks:
                sink.log(metrics, point.step)

    def _each(self, method: str, *args: Any) -> None:
        for sink in self._sinks:
            call = getattr(sink, method, None)
            if callable(call):
                call(*args)

    def publish_checkpoint(self, record: Mapping[str, Any], step: int) -> None:
        """MLflow: run tags, the provenance artifact and a LoggedModel, off-thread."""
        self._each("publish_checkpoint", record, step)

    def publish_file(self, path: str, record_sha256: str, step: int) -> None:
        self._each("publish_file", path, record_sha256, step)

    def flush(self, wait: bool = False) -> None:
        """Hands queued points to the writers; with `wait`, until they are stored."""
        for sink in self._sinks:
            try:
                sink.flush(wait=wait)
            except Exception as err:  # a logger failing must not stop training
                _warn(f"flushing {type(sink).__name__} failed: {err}")

    def close(self, status: str, global_zero: bool) -> None:
        """Closes this fit's sinks and ends the run depth opened with `status`
        (``FINISHED``, ``FAILED``, ``KILLED``)."""
        for sink in self._sinks:
            try:
                if isinstance(sink, SpoolSink):
                    sink.close(status)
                else:
                    sink.close()
            except Exception as err:
                _warn(f"closing {type(sink).__name__} failed: {err}")
            self.logged_models.extend(getattr(sink, "models", []))
        self._sinks = []
        if self.own_run is not None and global_zero:
            if unreachable(self.own_run[0]) is None:
                end_run(*self.own_run, status=status)
            elif self._own_spool is not None:  # the server went away mid-run
                try:
                    self._own_spool.end(status)
                except OSError as err:  # a spool that cannot be written must not stop a fit
                    _warn(f"the run's end could not be spooled to "
                          f"{self._own_spool.directory} ({err}); nothing else is lost: the "
                          "checkpoints carry their records")
        self._own_spool = None
