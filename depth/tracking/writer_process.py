"""`MetricWriterProcess`: the training process's side of the MLflow writer process.

The other side is `depth.tracking.writer_child`; the in-process fallback, when that
process dies, is `depth.tracking.writer_thread.BufferedMetricWriter`.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

from depth.tracking.store import redact
from depth.tracking.writer_thread import BufferedMetricWriter, CheckpointEvents

URI_ENV = "DEPTH_WRITER_TRACKING_URI"  # how the writer process gets its tracking URI


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
        own_run: (experiment name, run name) of a run depth opened itself: this writer
            ends it at `close`, handing the rest to the process rather than waiting
            (`depth.tracking.handoff`), and with `run_id` ``None`` the process creates it
            (`run_id` is set once it says which), so MLflow is not imported here.
        models: The list to add (step, LoggedModel id) to, also after `close`.
    """

    def __init__(self, tracking_uri: str, run_id: str | None, interval_s: float = 1.0,
                 spool: Any = None, retry_s: float = 30.0,
                 own_run: tuple[str, str] | None = None,
                 models: list[tuple[int, str]] | None = None):
        import subprocess

        from depth.tracking.writer_child import NEW_RUN_ENV

        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.own_run = own_run
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
        self.models = [] if models is None else models  # (step, LoggedModel id) per checkpoint
        self._fallback: BufferedMetricWriter | None = None
        self.error: str | None = None
        self.sent = 0
        self._closing = False
        self._abandoned = False
        self.ready = False  # the process has imported MLflow and opened its client
        self.replaced = False  # closed before it was ready: written in this process instead
        self.handed_off = False  # closed without waiting: the process finishes the run
        self._spool_only = False  # no process, and no run to write to: all goes to the spool
        self._wake = threading.Event()
        self._write_lock = threading.Lock()  # one line at a time on the process's stdin
        env = {**os.environ, URI_ENV: tracking_uri}
        # One token for the own run, whoever creates it (the process, or this one if the
        # process dies): a retry or the fallback finds a run already made, never adds one.
        self._open_token = uuid.uuid4().hex
        if run_id is None and own_run is not None:
            env[NEW_RUN_ENV] = json.dumps({"experiment_name": own_run[0], "run_name": own_run[1],
                                           "spool": str(spool.path) if spool else None,
                                           "token": self._open_token})
        self._proc = subprocess.Popen(
            # The URI goes through the environment, not argv: other users can read a
            # process's arguments (ps), and a URI may carry credentials.
            [sys.executable, "-m", "depth.tracking.writer_child", "-", run_id or "-",
             str(retry_s)], env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, bufsize=1,
            start_new_session=True)  # a Ctrl-C meant for training does not stop its writes
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
            if self._fallback is not None or self._spool_only:
                self._fallback_log(batch, checkpoints)
                return
            self._seq += 1
            seq = self._seq
            self._unacked[seq] = (batch, checkpoints)
        self._write({"seq": seq, "points": batch, "checkpoints": checkpoints})

    def _write(self, message: Mapping[str, Any]) -> bool:
        try:
            assert self._proc.stdin is not None
            with self._write_lock:
                self._proc.stdin.write(json.dumps(message) + "\n")
                self._proc.stdin.flush()
            return True
        except (OSError, ValueError):  # the writer is gone: its reader thread falls back
            return False

    def _read_replies(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                reply = json.loads(line)
            except ValueError:
                continue
            refused: tuple[list[Any], list[Any]] = ([], [])
            with self._cond:
                if "ready" in reply:
                    self.ready = True
                elif "run" in reply:
                    self.run_id = str(reply["run"])
                    if self.spool is not None:
                        self.spool.run_known(self.run_id)
                elif "ack" in reply:
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
            self._cond.notify_all()
            if self._abandoned or self.handed_off:
                return  # `close` spooled what is unacknowledged
            if not self._closing and not self.replaced and self.error is None:
                self.error = "metric writer process exited"
            if self._unacked or self._queue or self._checkpoints or not self._closing:
                self._start_fallback()
            self._cond.notify_all()

    def _start_fallback(self) -> None:
        """Called with the lock held: route everything through an in-process writer (and
        open the run here if the process died before it did; if that fails too, through
        the spool, whose `depth sync` creates the run)."""
        if self.run_id is None and not self._spool_only:
            from depth.tracking.store import open_run, redact_text

            try:
                self.run_id = open_run(*self.own_run, tracking_uri=self.tracking_uri,
                                       token=self._open_token)[1]
                self.spool.run_known(self.run_id)
            except Exception as err:
                self.error = redact_text(f"{type(err).__name__}: {err}".splitlines()[0])
                self._spool_only = True
        if self._fallback is None and not self._spool_only:
            from depth.tracking.store import store_client

            self._fallback = BufferedMetricWriter(store_client(self.tracking_uri), self.run_id,
                                                  self.interval_s, spool=self.spool)
        points = [p for seq in sorted(self._unacked) for p in self._unacked[seq][0]]
        checkpoints = [c for seq in sorted(self._unacked) for c in self._unacked[seq][1]]
        self._fallback_log(points + self._queue, checkpoints + self._checkpoints)
        self._unacked.clear()
        self._queue, self._checkpoints = [], []

    def _fallback_log(self, points: list[list[Any]], checkpoints: list[dict[str, Any]]) -> None:
        if self._fallback is None:  # spool only
            self.spool.add_points(points)
            self.spool.add_checkpoints(checkpoints)
            return
        self._fallback.log_points(points)
        self._fallback.publish_events(checkpoints)

    # ------------------------------------------------------------------ control

    def flush(self, wait: bool = False, timeout_s: float = 60.0) -> bool:
        """Ships what is queued; with `wait`, returns once all of it is stored (or timeout;
        2 s while the store refuses writes). Waiting on a process that is not ready yet
        (still importing MLflow) replaces it by a writer here, for local stores."""
        local = not self.tracking_uri.startswith(("http://", "https://"))  # no retry stalls
        if self.own_run is not None and self._fallback is None:
            wait = False  # `close` hands what is unacknowledged over: nothing to wait for
        if wait and local and not self.ready and self._fallback is None \
                and self._proc.poll() is None and "mlflow" in sys.modules:
            self._replace_with_fallback()
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

    def _replace_with_fallback(self) -> None:
        """Waiting on the process before it is ready (a short fit: it is still importing
        MLflow, ~2 s): stop it and write what is queued from this process, where MLflow is
        already imported, rather than wait. Nothing was written by it yet, so nothing twice.
        Only for local stores: a tracking server keeps the process, which fails fast."""
        self.replaced = True
        self._proc.kill()
        self._proc.wait()
        self._reader.join(timeout=5)  # it sees the end of output and starts the fallback

    def close(self, status: str = "FINISHED", timeout_s: float = 60.0) -> None:
        """Writes everything (waiting up to `timeout_s`), then lets the writer process go.

        Once every batch is acknowledged nothing is left to wait for: the process exits
        on end of input by itself, and its interpreter shutdown (~1-2 s with SQLAlchemy)
        is not the trainer's to wait for. For a run depth opened itself (`own_run`), not
        even that: the process is handed what is left and the run's end (`status`) and
        finishes in the background (`wait` waits for it).
        """
        if self.own_run is not None and self._hand_off(status, timeout_s):
            return
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
        if self.own_run is not None:
            self._end_here(status)
        if self._failed_checkpoints:
            warnings.warn(f"depth: {len(self._failed_checkpoints)} checkpoint records could not "
                          f"be published to {redact(self.tracking_uri)} ({self.error})",
                          stacklevel=2)
        if self._failed:
            warnings.warn(f"depth: {len(self._failed)} metric points could not be written to "
                          f"{redact(self.tracking_uri)} ({self.error})", stacklevel=2)

    def _hand_off(self, status: str, timeout_s: float) -> bool:
        """Spools what is unacknowledged and the run's end, and tells the process which
        spool events those are (`depth.tracking.handoff`); returns at once. False when the
        process is gone already (its fallback writes here instead)."""
        from depth.tracking.handoff import spool_unfinished

        self._ship()
        with self._lock:
            if self._fallback is not None or self._spool_only:
                return False
            self.handed_off, self._closing = True, True
            unacked, self._unacked = self._unacked, {}
        self._wake.set()
        try:
            body = spool_unfinished(self.spool, unacked, status)
        except (OSError, AttributeError) as err:  # no spool, or it cannot be written: wait
            warnings.warn(f"depth: the writer's rest could not be spooled ({err}); waiting for "
                          "it to be stored", stacklevel=3)
            body = {"spool": None, "end": [status, None]}
        sent = self._write({"handoff": body})
        try:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
        except OSError:
            pass
        if body["spool"] is None:
            self.wait(timeout_s)
        elif not sent:  # it died just now: what it had is in the spool
            warnings.warn(f"depth: the MLflow writer process exited at the end of the fit; "
                          f"what it had not stored is in {self.spool.directory} (replay with "
                          f"`depth sync {self.spool.directory}`)", stacklevel=3)
        return True

    def _end_here(self, status: str) -> None:
        """Ends the run from this process (its writer process died before the end)."""
        from depth.tracking.store import end_run

        try:
            if self.run_id is None:
                raise RuntimeError("the run was never created")
            end_run(self.tracking_uri, self.run_id, status)
        except Exception:
            if self.spool is not None:  # `depth sync` ends (or creates and ends) it
                self.spool.end(status)

    def wait(self, timeout_s: float = 60.0) -> bool:
        """Waits until the process has finished (after a handoff: stored what it was given
        and ended the run); True when it has."""
        try:
            self._proc.wait(timeout=timeout_s)
        except Exception:
            return False
        self._reader.join(timeout=5)
        return True

    def wait_run_id(self, timeout_s: float = 300.0) -> str | None:
        """The run's id, waiting up to `timeout_s` for the process to create it; ``None``
        when it could not (everything is then in the spool, and `depth sync` creates it)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self.run_id is None and self._reader.is_alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.5))
            return self.run_id
