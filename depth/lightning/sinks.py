"""Who gets each energy point and record: the trainer's loggers, MLflow writers, the spool.

On rank zero only. An ``MLFlowLogger``'s run, or (without one) a run depth opens itself,
gets a writer off the training thread (`depth.tracking.writer_process` or
`depth.tracking.writer_thread`); a server that does not answer gets the spool instead, so
that nothing waits on it. Other Lightning loggers get the points through their own
``log_metrics`` (they buffer).

The run depth opens itself is created, written and ended by its writer process, so that
the training process never imports MLflow for it (~2-3 s): its id is known once that
process says so (`Sinks.own_run` waits for it), and at the end of a fit the process is
handed what is left and finishes in the background (`Sinks.wait` waits for it).
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
from depth.tracking.store import default_tracking_uri, end_run, open_run, redact, unreachable


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
        self._own: list[Any] = []  # [tracking URI, run id or None, run name]
        self._own_writers: list[Any] = []  # writer processes of the own run, each fit's
        self.logged_models: list[tuple[int, str]] = []  # (step, MLflow LoggedModel id)
        self._sinks: list[Any] = []
        self._own_spool: Spool | None = None

    @property
    def own_run(self) -> tuple[str, str] | None:
        """(tracking URI, run id) of the run depth opened itself, or ``None`` without one.

        Its writer process creates it: this waits (up to 5 minutes) until it has said which
        run; ``None`` if it could not create it (its events are then in the spool, and
        `depth sync` creates the run)."""
        if not self._own:
            return None
        if self._own[1] is None and self._own_writers:
            self._own[1] = self._own_writers[-1].wait_run_id()
        return (self._own[0], self._own[1]) if self._own[1] else None

    def wait(self, timeout_s: float = 120.0) -> bool:
        """Waits until the writer processes of finished fits have stored everything and
        ended the run; True when they have (else what they hold is in the spool)."""
        deadline = time.monotonic() + timeout_s
        return all([w.wait(max(0.0, deadline - time.monotonic())) for w in self._own_writers])

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
            targets = [(self._own[0] if self._own else default_tracking_uri(), None)]
        down = {uri: why for uri in {u for u, _ in targets} if (why := unreachable(uri))}
        for uri, logger in targets:
            if uri in down:  # nothing waits on the server: everything goes to the spool
                run_id = (getattr(logger, "_run_id", None) if logger is not None
                          else self.own_run[1] if self._own and self.own_run else None)
                spool = self._spool(trainer, uri, run_id)
                _warn(f"MLflow tracking server {redact(uri)} cannot be used ({down[uri]}); "
                      f"energy metrics and records are spooled to {spool.directory} (replay "
                      f"with `depth sync {spool.directory}`); checkpoints still carry their "
                      "records")
                sinks.append(SpoolSink(spool))
                continue
            remote = uri.startswith(("http://", "https://"))  # fails fast only in a process
            use_process = options.mlflow_writer == "process" or (
                options.mlflow_writer == "auto" and (logger is None or remote
                                                     or self._writer_kind(trainer) == "process"))
            if logger is not None:
                run_id = logger.run_id
            elif not self._own:  # one run for every fit of this callback
                self._own = [uri, None, _run_name()]
                if not use_process:  # a writer thread here: MLflow is imported here anyway
                    self._own[1] = open_run(options.experiment_name, self._own[2], uri)[1]
                run_id = self._own[1]
            else:
                run_id = self.own_run[1] if self.own_run else None  # the first fit's
            spool = self._spool(trainer, uri, run_id)
            if logger is None:
                self._own_spool = spool
            if use_process:
                own = (options.experiment_name, self._own[2]) if logger is None else None
                sinks.append(MetricWriterProcess(uri, run_id, options.flush_interval_s, spool,
                                                 retry_s=options.tracking_retry_s, own_run=own,
                                                 models=self.logged_models))
                if own is not None:
                    self._own_writers.append(sinks[-1])
            else:
                from depth.tracking.store import store_client

                sinks.append(BufferedMetricWriter(store_client(uri), run_id,
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
        from depth.tracking.writer_process import MetricWriterProcess

        ended = False  # by the own run's writer process (or its fallback)
        for sink in self._sinks:
            try:
                if isinstance(sink, (SpoolSink, MetricWriterProcess)):
                    sink.close(status)
                    ended = ended or getattr(sink, "own_run", None) is not None
                else:
                    sink.close()
            except Exception as err:
                _warn(f"closing {type(sink).__name__} failed: {err}")
            if getattr(sink, "models", self.logged_models) is not self.logged_models:
                self.logged_models.extend(sink.models)
        self._sinks = []
        if self._own and self._own[1] is not None and global_zero and not ended:
            if unreachable(self._own[0]) is None:
                end_run(self._own[0], self._own[1], status=status)
            elif self._own_spool is not None:  # the server went away mid-run
                try:
                    self._own_spool.end(status)
                except OSError as err:  # a spool that cannot be written must not stop a fit
                    _warn(f"the run's end could not be spooled to "
                          f"{self._own_spool.directory} ({err}); nothing else is lost: the "
                          "checkpoints carry their records")
        self._own_spool = None
