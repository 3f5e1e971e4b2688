"""MLflow metric points and checkpoint events, written in batches off the training thread.

One ``log_metric`` call costs ~5 ms on a SQLite store, and even batched, MLflow's
SQLAlchemy store spends ~0.3 ms of GIL-holding Python per metric row. One point per
optimizer step at 10 ms steps is ~500 rows a second, so a writer *thread* would hold the
GIL a quarter of the time. `MetricWriterProcess` ships points once a second to a separate
process (`depth.tracking.writer_child`) that calls ``MlflowClient.log_batch``;
`BufferedMetricWriter` is the in-process fallback (a daemon thread). mlflow is imported
only where used.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

MAX_METRICS_PER_BATCH = 1000  # MLflow's limit per log_batch call


class CheckpointEvents:
    """The checkpoint events a writer takes, as dicts for `publish_events` (the writer's
    queue, the writer process's JSON lines, or the spool): ``{"record", "step"}`` for a
    record and ``{"file", "record_sha256", "step"}`` for a checkpoint file to upload."""

    def publish_events(self, events: Iterable[Mapping[str, Any]]) -> None:
        raise NotImplementedError

    def publish_checkpoint(self, record: Mapping[str, Any], step: int) -> None:
        """Queues a checkpoint's record for the run tags, artifact and a LoggedModel."""
        self.publish_events([{"record": dict(record), "step": int(step)}])

    def publish_file(self, path: str, record_sha256: str, step: int) -> None:
        """Queues a checkpoint file's upload to the LoggedModel of its record."""
        self.publish_events([{"file": str(path), "record_sha256": record_sha256,
                              "step": int(step)}])


class BufferedMetricWriter(CheckpointEvents):
    """Queues metric points and writes them to one MLflow run in batches, off-thread.

    Args:
        client: An ``mlflow.MlflowClient`` (``MLFlowLogger.experiment``).
        run_id: The run to write to.
        interval_s: How often the background thread sends what is queued.
        spool: Where what the store refuses goes (`depth.tracking.spool.Spool`); without one, it
            stays queued in memory and is retried.

    A failed send warns once. With a spool, the refused batch is spooled at once (MLflow's
    client has retried it already); without one, it stays queued for the next attempt.
    """

    def __init__(self, client: Any, run_id: str, interval_s: float = 1.0,
                 spool: Any = None):
        self._client = client
        self.run_id = run_id
        self.interval_s = interval_s
        self.spool = spool
        self._queue: list[Any] = []
        self._checkpoints: list[dict[str, Any]] = []
        self._inflight: tuple[list[Any], list[dict[str, Any]]] = ([], [])
        self.models: list[tuple[int, str]] = []  # (step, LoggedModel id) per checkpoint
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.sent = 0
        self.error: str | None = None
        self._thread = threading.Thread(target=self._loop, name="depth-mlflow", daemon=True)
        self._thread.start()

    def log(self, metrics: Mapping[str, float], step: int, timestamp_ms: int | None = None) -> None:
        """Queues one point per metric; returns at once."""
        ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
        self.log_points([key, value, ts, step] for key, value in metrics.items())

    def log_points(self, points: Iterable[Sequence[Any]]) -> None:
        """Queues ``(key, value, timestamp_ms, step)`` points."""
        with self._lock:
            self._queue.extend([k, float(v), int(ts), int(step)] for k, v, ts, step in points)

    def publish_events(self, events: Iterable[Mapping[str, Any]]) -> None:
        with self._lock:
            self._checkpoints.extend(dict(e) for e in events)
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval_s)
            self._wake.clear()
            self._send()
        self._send()  # what was queued before close

    def _send(self) -> None:
        with self._send_lock:
            if self._send_metrics():
                self._send_checkpoints()

    def _send_checkpoints(self) -> None:
        from depth.tracking.publish import publish_event

        while True:
            with self._lock:
                if not self._checkpoints:
                    return
                event = self._checkpoints.pop(0)
                self._inflight = ([], [event])
            try:
                model_id, problem = publish_event(self._client, self.run_id, event)
            except Exception as err:
                self._refused(err, [], [event])
                return
            finally:
                self._inflight = ([], [])
            if model_id is not None:
                self.models.append((int(event["step"]), model_id))
            if problem:
                warnings.warn(f"depth: {problem}", stacklevel=2)

    def _send_metrics(self) -> bool:
        from mlflow.entities import Metric

        with self._lock:
            batch, self._queue = self._queue, []
            self._inflight = (batch, [])
        try:
            while batch:
                chunk = batch[:MAX_METRICS_PER_BATCH]
                try:
                    self._client.log_batch(self.run_id, metrics=[
                        Metric(k, v, ts, step) for k, v, ts, step in chunk])
                except Exception as err:
                    self._refused(err, batch, [])
                    return False
                self.sent += len(chunk)
                batch = batch[MAX_METRICS_PER_BATCH:]
                self._inflight = (batch, [])
            return True
        finally:
            self._inflight = ([], [])

    def _refused(self, err: BaseException, points: list[Any],
                 checkpoints: list[dict[str, Any]]) -> None:
        """The store refused: spool (or, without a spool, queue again), and say so once."""
        if self.spool is not None:
            self.spool.add_points(points)
            self.spool.add_checkpoints(checkpoints)
        else:
            with self._lock:
                self._queue[:0] = points
                self._checkpoints[:0] = checkpoints
        if self.error is None:
            from depth.tracking.store import redact_text  # MLflow names the URL, password too

            self.error = redact_text(f"{type(err).__name__}: {err}".splitlines()[0])
            where = (f"spooled to {self.spool.path}; replay with `depth sync "
                     f"{self.spool.directory}`" if self.spool is not None
                     else "kept in memory and retried")
            warnings.warn(f"depth: MLflow writes failed ({self.error}); {where}", stacklevel=3)

    def flush(self, wait: bool = True, timeout_s: float = 60.0) -> bool:
        """Wakes the writer thread; with `wait`, returns once what is queued has been sent
        (True) or refused or `timeout_s` passed (False). Never sends on the caller's thread,
        whose MLflow client could retry a dead server for minutes."""
        if not self._thread.is_alive():
            self._send()
            return self.pending == 0
        self._wake.set()
        if not wait:
            return True
        deadline = time.monotonic() + (timeout_s if self.error is None else 2.0)
        while (self.pending or self._busy) and time.monotonic() < deadline:
            if self.error is not None and self.spool is not None and not self._busy:
                break  # refused batches went to the spool; nothing left to wait for
            self._wake.set()
            time.sleep(0.01)
        return self.pending == 0 and not self._busy

    @property
    def _busy(self) -> bool:
        return self._send_lock.locked()

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._queue) + len(self._checkpoints)

    def close(self, timeout_s: float = 60.0) -> None:
        """Sends what is queued, waiting up to `timeout_s` (2 s once the store has refused
        writes); whatever is still unsent then goes to the spool."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=timeout_s if self.error is None else 2.0)
        if not self._thread.is_alive() and self.pending == 0:
            return
        with self._lock:  # stuck in a request, or refused: spool the rest, in flight too
            points = self._inflight[0] + self._queue
            checkpoints = self._inflight[1] + self._checkpoints
            self._queue, self._checkpoints = [], []
        if self.spool is not None:
            self.spool.add_points(points)
            self.spool.add_checkpoints(checkpoints)
        elif points or checkpoints:
            warnings.warn(f"depth: {len(points)} metric points and {len(checkpoints)} "
                          f"checkpoint events could not be written ({self.error})", stacklevel=2)
