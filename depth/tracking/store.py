"""MLflow: metric points written in batches, off the training thread and process.

One ``log_metric`` call costs ~5 ms on a SQLite store, and even batched, MLflow's
SQLAlchemy store spends ~0.3 ms of GIL-holding Python per metric row. One point per
optimizer step at 10 ms steps is ~500 rows a second, so a writer *thread* would hold the
GIL a quarter of the time. `MetricWriterProcess` ships points once a second to a separate
process (`depth.tracking.writer_child`) that calls ``MlflowClient.log_batch``;
`BufferedMetricWriter` is the in-process fallback (a daemon thread). mlflow is imported
only where used.
"""

from __future__ import annotations

import json
import os
import threading
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

MAX_METRICS_PER_BATCH = 1000
URI_ENV = "DEPTH_WRITER_TRACKING_URI"  # how the writer process gets its tracking URI


def redact(uri: str) -> str:
    """A URI fit to print or store: any ``user:password@`` replaced by ``***@``.

    MLflow also takes credentials from ``MLFLOW_TRACKING_USERNAME``/``_PASSWORD`` and
    ``_TOKEN``, which depth never reads, writes or logs.
    """
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri
    if "@" not in parts.netloc:
        return uri
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"***@{host}"))


def is_mlflow_logger(logger: Any) -> bool:
    """True for Lightning's ``MLFlowLogger`` (both the ``lightning`` and the
    ``pytorch_lightning`` packages), without importing mlflow."""
    return type(logger).__name__ == "MLFlowLogger" and hasattr(logger, "run_id")


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
            self.error = f"{type(err).__name__}: {err}".splitlines()[0]
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


def tracking_uri_of(logger: Any) -> str:
    """The tracking URI an ``MLFlowLogger`` writes to."""
    uri = getattr(logger, "_tracking_uri", None)
    if uri:
        return str(uri)
    import mlflow

    return mlflow.get_tracking_uri()


class MetricWriterProcess(CheckpointEvents):
    """Sends metric points to a ``depth.tracking.writer_child`` process, which writes to MLflow.

    The training process only appends tuples to a list; a sender thread ships them once
    per `interval_s` as a JSON line (a few hundred microseconds of work per second). Each
    batch is kept until the writer acknowledges it; if the writer dies, unacknowledged
    and queued points go to an in-process `BufferedMetricWriter`, so none are lost.

    When the store refuses a batch (its server is down: the writer process fails fast, see
    `depth.tracking.writer_child`), the batch goes to the `spool`, and at `close` whatever is still
    unacknowledged goes there too, after at most 2 s of waiting once an outage is known.

    Args:
        tracking_uri: The MLflow tracking URI of the run.
        run_id: The run to write to.
        interval_s: How often queued points are shipped.
        spool: A `depth.tracking.spool.Spool` for what cannot be stored; without one, refused
            batches are reported at `close` as lost.
        retry_s: How long the writer retries a batch while the store had been working,
            before it is refused (then spooled).
    """

    def __init__(self, tracking_uri: str, run_id: str, interval_s: float = 1.0,
                 spool: Any = None, retry_s: float = 30.0):
        import subprocess
        import sys

        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.interval_s = interval_s
        self.spool = spool
        self._down = False  # the last reply was a refusal; no acknowledgement since
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._queue: list[list[Any]] = []
        self._checkpoints: list[dict[str, Any]] = []
        self._unacked: dict[int, tuple[list[list[Any]], list[dict[str, Any]]]] = {}
        self._seq = 0
        self._failed: list[list[Any]] = []
        self._failed_checkpoints: list[dict[str, Any]] = []
        self.models: list[tuple[int, str]] = []  # (step, LoggedModel id) per checkpoint
        self._fallback: BufferedMetricWriter | None = None
        self.error: str | None = None
        self.sent = 0
        self._closing = False
        self._abandoned = False
        self._wake = threading.Event()
        self._proc = subprocess.Popen(
            # The URI goes through the environment, not argv: other users can read a
            # process's arguments (ps), and a URI may carry credentials.
            [sys.executable, "-m", "depth.tracking.writer_child", "-", run_id, str(retry_s)],
            env={**os.environ, URI_ENV: tracking_uri},
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, bufsize=1)
        self._reader = threading.Thread(target=self._read_replies, name="depth-mlflow-acks",
                                        daemon=True)
        self._sender = threading.Thread(target=self._send_loop, name="depth-mlflow-send",
                                        daemon=True)
        self._reader.start()
        self._sender.start()

    def log(self, metrics: Mapping[str, float], step: int, timestamp_ms: int | None = None) -> None:
        """Queues one point per metric; returns at once."""
        ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
        with self._lock:
            self._queue.extend([key, float(value), ts, int(step)] for key, value in metrics.items())

    def publish_events(self, events: Iterable[Mapping[str, Any]]) -> None:
        with self._lock:
            self._checkpoints.extend(dict(e) for e in events)
        self._wake.set()

    # ------------------------------------------------------------------ threads

    def _send_loop(self) -> None:
        while not self._closing:
            self._wake.wait(self.interval_s)
            self._wake.clear()
            self._ship()

    def _ship(self) -> None:
        with self._lock:
            if not self._queue and not self._checkpoints:
                return
            batch, self._queue = self._queue, []
            checkpoints, self._checkpoints = self._checkpoints, []
            if self._fallback is not None:
                self._fallback_log(batch, checkpoints)
                return
            self._seq += 1
            seq = self._seq
            self._unacked[seq] = (batch, checkpoints)
        try:
            assert self._proc.stdin is not None
            self._proc.stdin.write(json.dumps({"seq": seq, "points": batch,
                                               "checkpoints": checkpoints}) + "\n")
            self._proc.stdin.flush()
        except (OSError, ValueError):  # the writer is gone: its reader thread falls back
            pass

    def _read_replies(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                reply = json.loads(line)
            except ValueError:
                continue
            refused: tuple[list[Any], list[Any]] = ([], [])
            with self._cond:
                if "ack" in reply:
                    points, _ = self._unacked.pop(reply["ack"], ([], []))
                    self.sent += len(points)
                    self.models.extend((int(s), m) for s, m in reply.get("models", []))
                    self._down = False
                elif "failed" in reply:
                    points, checkpoints = self._unacked.pop(reply["failed"], ([], []))
                    if self.spool is not None:
                        refused = (points, checkpoints)  # spooled below, not under the lock
                    else:
                        self._failed.extend(points)
                        self._failed_checkpoints.extend(checkpoints)
                    self._down = True
                elif "error" in reply:
                    self._down = True
                    if self.error is None:
                        self.error = reply["error"]
                        where = (f"what it refuses is spooled to {self.spool.directory}; "
                                 f"replay with `depth sync {self.spool.directory}`"
                                 if self.spool is not None else "retrying")
                        warnings.warn(f"depth: MLflow at {redact(self.tracking_uri)} refused "
                                      f"writes ({self.error}); {where}", stacklevel=2)
                elif "warning" in reply:
                    warnings.warn(f"depth: {reply['warning']}", stacklevel=2)
                self._cond.notify_all()
            if refused[0] or refused[1]:
                self.spool.add_points(refused[0])
                self.spool.add_checkpoints(refused[1])
        # End of output: the writer exited. Anything not acknowledged is written here.
        with self._cond:
            if self._abandoned:
                return  # `close` spools what is unacknowledged
            if not self._closing and self.error is None:
                self.error = "metric writer process exited"
            if self._unacked or self._queue or self._checkpoints or not self._closing:
                self._start_fallback()
            self._cond.notify_all()

    def _start_fallback(self) -> None:
        """Called with the lock held: route everything through an in-process writer."""
        if self._fallback is None:
            from mlflow import MlflowClient

            self._fallback = BufferedMetricWriter(MlflowClient(self.tracking_uri), self.run_id,
                                                  self.interval_s, spool=self.spool)
        points = [p for seq in sorted(self._unacked) for p in self._unacked[seq][0]]
        checkpoints = [c for seq in sorted(self._unacked) for c in self._unacked[seq][1]]
        self._fallback_log(points + self._queue, checkpoints + self._checkpoints)
        self._unacked.clear()
        self._queue, self._checkpoints = [], []

    def _fallback_log(self, points: list[list[Any]], checkpoints: list[dict[str, Any]]) -> None:
        assert self._fallback is not None
        self._fallback.log_points(points)
        self._fallback.publish_events(checkpoints)

    # ------------------------------------------------------------------ control

    def flush(self, wait: bool = False, timeout_s: float = 60.0) -> bool:
        """Ships what is queued; with `wait`, returns once all of it is stored (or timeout;
        2 s while the store refuses writes)."""
        self._ship()
        if self._fallback is not None:
            self._fallback.flush(wait=False)
        if not wait:
            return True
        deadline = time.monotonic() + (2.0 if self._down else timeout_s)
        with self._cond:
            while self._unacked and self._fallback is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.5))
        if self._fallback is not None:
            return self._fallback.flush(wait=True, timeout_s=max(0.0, deadline - time.monotonic()))
        return not self._unacked

    @property
    def pending(self) -> int:
        with self._lock:
            fallback = self._fallback.pending if self._fallback is not None else 0
            return (len(self._queue) + len(self._checkpoints) + len(self._failed)
                    + sum(len(p) + len(c) for p, c in self._unacked.values()) + fallback)

    def close(self, timeout_s: float = 60.0) -> None:
        """Writes everything (waiting up to `timeout_s`), then lets the writer process go.

        Once every batch is acknowledged nothing is left to wait for: the process exits
        on end of input by itself, and its interpreter shutdown (~1-2 s with SQLAlchemy)
        is not the trainer's to wait for.
        """
        stored = self.flush(wait=True, timeout_s=timeout_s)
        self._closing = True
        self._wake.set()
        if not stored and self.spool is not None and self._fallback is None:
            self._abandoned = True
            self._proc.kill()  # it is retrying a store that refuses: spool the rest instead
            self._proc.wait()
            self._reader.join(timeout=5)
            with self._lock:
                unacked = [self._unacked.pop(seq) for seq in sorted(self._unacked)]
            for points, checkpoints in unacked:
                self.spool.add_points(points)
                self.spool.add_checkpoints(checkpoints)
            return
        try:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
        except OSError:
            pass
        if not stored or self._fallback is not None:
            try:
                self._proc.wait(timeout=timeout_s)
            except Exception:
                self._proc.kill()
            self._reader.join(timeout=5)
        if self._fallback is not None:
            self._fallback.close()
            self.models.extend(self._fallback.models)
        if self._failed_checkpoints:
            warnings.warn(f"depth: {len(self._failed_checkpoints)} checkpoint records could not "
                          f"be published to {redact(self.tracking_uri)} ({self.error})",
                          stacklevel=2)
        if self._failed:
            warnings.warn(f"depth: {len(self._failed)} metric points could not be written to "
                          f"{redact(self.tracking_uri)} ({self.error})", stacklevel=2)


DEFAULT_STORE_DIR = Path("mlruns")


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the local SQLite store under ``mlruns/``.

    MLflow 3 refuses the old ``./mlruns`` file store, so the default is
    ``sqlite:///mlruns/mlflow.db`` (relative to the working directory), with artifacts in
    ``mlruns/artifacts``.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    DEFAULT_STORE_DIR.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{DEFAULT_STORE_DIR}/mlflow.db"


def unreachable(uri: str, timeout_s: float = 2.0) -> str | None:
    """Why a tracking server cannot be used now (one line), or ``None`` when it answers.

    Only ``http(s)://`` URIs are probed (``GET /health``); MLflow's own client would retry
    an unreachable server for minutes, stalling whoever asked.
    """
    if not uri.startswith(("http://", "https://")):
        return None
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
            return None
    except urllib.error.HTTPError:
        return None  # it answered: a server without /health, or behind auth
    except (OSError, ValueError) as err:
        return f"{type(err).__name__}: {getattr(err, 'reason', err)}"


def artifacts_beside(uri: str) -> str | None:
    """For a SQLite store, ``artifacts/`` next to the database file (MLflow's own default,
    ``./mlruns`` under the working directory, would scatter artifacts wherever a script
    runs); for a tracking server, ``None``: the server decides."""
    if not uri.startswith("sqlite:///"):
        return None
    database = Path(uri[len("sqlite:///"):])
    return (database.parent / "artifacts").resolve().as_uri()


def open_run(experiment_name: str, run_name: str | None = None,
             tracking_uri: str | None = None) -> tuple[str, str]:
    """Creates a run (and its experiment if needed); returns (tracking URI, run id)."""
    from mlflow import MlflowClient

    uri = tracking_uri or default_tracking_uri()
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is not None:
        experiment_id = experiment.experiment_id
    else:
        experiment_id = client.create_experiment(experiment_name,
                                                 artifact_location=artifacts_beside(uri))
    run = client.create_run(experiment_id, run_name=run_name, tags={"depth.own_run": "true"})
    return uri, run.info.run_id


def end_run(tracking_uri: str, run_id: str, failed: bool = False) -> None:
    """Marks a run the callback opened as finished (or failed)."""
    from mlflow import MlflowClient

    MlflowClient(tracking_uri).set_terminated(run_id, "FAILED" if failed else "FINISHED")
