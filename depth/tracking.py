"""MLflow: metric points written in batches off the training thread.

One ``log_metric`` call costs ~5 ms on a SQLite store; one point per optimizer step at
10 ms steps would make training ~1.5x slower. `BufferedMetricWriter` queues points and a
daemon thread sends them with ``MlflowClient.log_batch`` (<= 1000 metrics per call, the
MLflow limit) every `interval_s`, and on `flush`. mlflow is imported only where used.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Mapping
from typing import Any

MAX_METRICS_PER_BATCH = 1000


def is_mlflow_logger(logger: Any) -> bool:
    """True for Lightning's ``MLFlowLogger`` (both the ``lightning`` and the
    ``pytorch_lightning`` packages), without importing mlflow."""
    return type(logger).__name__ == "MLFlowLogger" and hasattr(logger, "run_id")


class BufferedMetricWriter:
    """Queues metric points and writes them to one MLflow run in batches, off-thread.

    Args:
        client: An ``mlflow.MlflowClient`` (``MLFlowLogger.experiment``).
        run_id: The run to write to.
        interval_s: How often the background thread sends what is queued.

    A failed send keeps the points queued for the next attempt and warns once.
    """

    def __init__(self, client: Any, run_id: str, interval_s: float = 1.0):
        self._client = client
        self.run_id = run_id
        self.interval_s = interval_s
        self._queue: list[Any] = []
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
        from mlflow.entities import Metric

        ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
        points = [Metric(key, float(value), ts, int(step)) for key, value in metrics.items()]
        with self._lock:
            self._queue.extend(points)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval_s)
            self._wake.clear()
            self._send()

    def _send(self) -> None:
        with self._send_lock:
            with self._lock:
                batch, self._queue = self._queue, []
            while batch:
                chunk = batch[:MAX_METRICS_PER_BATCH]
                try:
                    self._client.log_batch(self.run_id, metrics=chunk)
                except Exception as err:  # keep the points; say so once
                    with self._lock:
                        self._queue[:0] = batch
                    if self.error is None:
                        self.error = f"{type(err).__name__}: {err}".splitlines()[0]
                        warnings.warn(f"depth: MLflow metrics not written yet ({self.error}); "
                                      "kept in memory and retried", stacklevel=2)
                    return
                self.sent += len(chunk)
                batch = batch[MAX_METRICS_PER_BATCH:]

    def flush(self) -> None:
        """Sends everything queued now, on the caller's thread (checkpoints, fit end)."""
        self._send()

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)
        self._send()
