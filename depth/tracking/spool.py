"""The spool: what could not reach a tracking server, kept on local disk for `depth sync`.

When a tracking server is down (at the start of a fit, or for a while mid-run), every
metric point and checkpoint event that would have gone there is appended to a JSON-lines
file instead, one file per run::

    SPOOL/<run-key>.jsonl       {"spool": 1, "tracking_uri": ..., "run_id": ..., ...}  header
                                {"id": ..., "points": [[key, value, timestamp_ms, step], ...]}
                                {"id": ..., "checkpoint": {"record": {...}, "step": S}}
                                {"id": ..., "checkpoint": {"file": PATH, "record_sha256": H, ...}}
                                {"id": ..., "end": "FINISHED" | "FAILED"}
    SPOOL/<run-key>.jsonl.done  ids already replayed (and the run id a replay created)

`sync_spool` replays the events not yet in ``.done`` into the store the user names (never
the one a file's header names: a spool file is untrusted input, see
`depth.tracking.spool_input`) and appends each id once its event is stored, so a replay
that is interrupted or run twice writes nothing twice. Should an event be stored without
its id reaching ``.done`` (a crash between the two), replaying it again is still harmless:
MLflow drops a metric row identical to one it has (same key, value, timestamp and step),
and a checkpoint's LoggedModel is found by its ``depth.record_sha256`` tag rather than
created again. ``.done`` also lists the events set aside (malformed, or refused by the
server), with why.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from depth.tracking.spool_input import (
    DONE_SUFFIX,
    SCHEMA,
    SUFFIX,
    SpoolContents,
    SpoolError,
    folder_lock,
    mark_done,
    read_done,
    read_spool,
    spool_files,
)
from depth.tracking.store import redact, redact_text, urls_unprinted  # stdlib-only
from depth.tracking.writer_thread import CheckpointEvents

__all__ = ["Spool", "SpoolError", "SpoolSink", "SyncReport", "spool_files", "sync_spool"]


class Spool:
    """An append-only spool file for one run.

    Args:
        directory: The spool folder (created on the first write).
        tracking_uri: Where the events were meant to go.
        run_id: The run they belong to, or ``None`` when the run could not even be
            created (the server was down from the start): `sync_spool` then creates it.
        experiment_name: The experiment of a run that `sync_spool` creates.
        run_name: Its name.

    Nothing is written until the first event, so a run that never needed the spool leaves
    no file behind.
    """

    def __init__(self, directory: str | Path, tracking_uri: str, run_id: str | None,
                 experiment_name: str | None = None, run_name: str | None = None):
        self.directory = Path(directory)
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        key = run_id or "new"  # with a random part: two fits in one second, two files
        stamp = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        self.path = self.directory / f"{key}-{stamp}{SUFFIX}"
        # Credentials in the URI are not stored: `sync_spool` takes them from
        # MLFLOW_TRACKING_URI or its `tracking_uri` argument.
        self._header = {"spool": SCHEMA, "tracking_uri": redact(tracking_uri), "run_id": run_id,
                        "experiment_name": experiment_name, "run_name": run_name,
                        "created_unix": time.time()}
        self._lock = threading.Lock()
        self.events = 0
        self.points = 0

    def run_known(self, run_id: str) -> None:
        """The run became known (a writer process created it): a file not begun yet names
        it; a file already begun without it gets it through ``.done`` (the writer process
        writes it there, as `sync_spool` does for a run it creates)."""
        self.run_id = run_id
        with self._lock:
            if self.events == 0:
                self._header["run_id"] = run_id

    def _append(self, event: dict[str, Any]) -> str:
        key = uuid.uuid4().hex
        event = {"id": key, **event}
        with self._lock:
            if self.events == 0:
                self.directory.mkdir(parents=True, exist_ok=True)
                with open(self.path, "a") as f:
                    f.write(json.dumps(self._header) + "\n")
            with open(self.path, "a") as f:  # one line per event: a crash loses at most it
                f.write(json.dumps(event, separators=(",", ":")) + "\n")
                f.flush()
                os.fsync(f.fileno())
            self.events += 1
        return key

    def add_points(self, points: Sequence[Sequence[Any]]) -> list[str]:
        """Spools ``(key, value, timestamp_ms, step)`` metric points; returns the event's id
        (none when there are no points)."""
        if not points:
            return []
        key = self._append({"points": [list(p) for p in points]})
        self.points += len(points)
        return [key]

    def add_checkpoints(self, events: Iterable[Mapping[str, Any]]) -> list[str]:
        """Spools checkpoint events as the writers queue them (a record, or a file); returns
        their ids."""
        return [self._append({"checkpoint": dict(event)}) for event in events]

    def end(self, status: str) -> str:
        """Spools the end of the run (``FINISHED``, ``FAILED``, ``KILLED``), for a run `sync_spool`
        creates or one depth opened itself; returns the event's id."""
        return self._append({"end": status})


class SpoolSink(CheckpointEvents):
    """A metric sink that writes straight to a `Spool` (the server was down at start).

    Points are buffered in memory and appended once per `flush`, i.e. once per
    ``flush_interval_s`` at most, so the training thread does not write a line per step.
    """

    def __init__(self, spool: Spool):
        self.spool = spool
        self.models: list[tuple[int, str]] = []
        self.error: str | None = None
        self._points: list[list[Any]] = []
        self._last_flush = time.monotonic()

    def log(self, metrics: Mapping[str, float], step: int, timestamp_ms: int | None = None) -> None:
        ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
        self._points.extend([k, float(v), ts, int(step)] for k, v in metrics.items())
        if time.monotonic() - self._last_flush > 1.0:
            self.flush()

    def publish_events(self, events: Iterable[Mapping[str, Any]]) -> None:
        self.flush()  # the points before a checkpoint come first in the file
        self.spool.add_checkpoints(events)

    def flush(self, wait: bool = False) -> bool:
        points, self._points = self._points, []
        self.spool.add_points(points)
        self._last_flush = time.monotonic()
        return True

    @property
    def pending(self) -> int:
        return len(self._points)

    def close(self, status: str = "FINISHED") -> None:
        """Spools what is buffered and, for a run that `sync_spool` will create, its end
        (``FINISHED``, ``FAILED`` or ``KILLED``)."""
        self.flush()
        if self.spool.run_id is None:
            self.spool.end(status)


# ---------------------------------------------------------------------------- replay


@dataclass
class SyncReport:
    """What `sync_spool` did.

    Attributes:
        warnings: Notes, one line each: events set aside, files not uploaded, torn lines.
        refused: Files not replayed at all, one line each: not a spool, or recorded for
            another store than the one replayed into.
        failed: Files whose replay the server stopped, one line each (run it again).
    """

    files: int = 0
    replayed: int = 0
    skipped: int = 0  # replayed (or set aside) before
    set_aside: int = 0
    points: int = 0
    runs: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def _create_run(client: Any, header: Mapping[str, Any], tracking_uri: str) -> str:
    from depth.tracking.store import artifacts_beside

    name = header.get("experiment_name") or "depth"
    experiment = client.get_experiment_by_name(name)
    experiment_id = (experiment.experiment_id if experiment is not None else
                     client.create_experiment(name,
                                              artifact_location=artifacts_beside(tracking_uri)))
    start_ms = int(float(header.get("created_unix") or time.time()) * 1000)
    run = client.create_run(experiment_id, start_time=start_ms, run_name=header.get("run_name"),
                            tags={"depth.own_run": "true", "depth.spooled": "true"})
    return run.info.run_id


def _refusal(recorded: str, uri: str, named: bool) -> str | None:
    """Why a file recorded for the store `recorded` is not replayed into `uri`, or ``None``
    when that is the store it was recorded for."""
    if recorded.rstrip("/") == redact(uri).rstrip("/"):
        return None
    whence = ("--tracking-uri" if named else "MLFLOW_TRACKING_URI"
              if os.environ.get("MLFLOW_TRACKING_URI") else "the default store")
    return (f"recorded for {recorded}, not {redact(uri)} ({whence}); nothing replayed from "
            f"it: to replay it there, pass --tracking-uri {recorded}"
            + (" with its user:password" if "***@" in recorded else ""))


def _is_the_events_fault(err: Exception) -> bool:
    """True when replaying an event failed because of the event (the server refused its
    values), not because of the server: it is set aside rather than retried forever."""
    from mlflow.exceptions import MlflowException

    if isinstance(err, MlflowException):
        return err.error_code == "INVALID_PARAMETER_VALUE"
    return isinstance(err, (KeyError, TypeError, ValueError))


def _replay_event(client: Any, run_id: str, event: Mapping[str, Any], path: Path,
                  report: SyncReport) -> None:
    from mlflow.entities import Metric

    from depth.tracking.publish import publish_event
    from depth.tracking.writer_thread import MAX_METRICS_PER_BATCH

    if "points" in event:
        metrics = [Metric(k, float(v), int(ts), int(s)) for k, v, ts, s in event["points"]]
        for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=metrics[i:i + MAX_METRICS_PER_BATCH])
        report.points += len(metrics)
    elif "checkpoint" in event:  # a file is uploaded only if it is that record's checkpoint
        message = publish_event(client, run_id, event["checkpoint"], verify_files=True)[1]
        if message:
            report.warnings.append(f"{path}: {message}")
    elif "end" in event:
        with urls_unprinted(client.tracking_uri):
            client.set_terminated(run_id, event["end"])


def _set_aside(done_path: Path, key: str, reason: str, path: Path, report: SyncReport) -> None:
    mark_done(done_path, {"id": key, "set_aside": reason})
    report.set_aside += 1
    report.warnings.append(f"{path}: {reason}; set aside (kept in the file, not replayed)")


def _replay_file(client: Any, uri: str, path: Path, contents: SpoolContents,
                 report: SyncReport) -> tuple[str | None, int, int]:
    """Replays one checked spool file; returns (its run, the events replayed now, those
    replayed before)."""
    done_path = path.with_name(path.name + DONE_SUFFIX)
    done, created = read_done(done_path)
    run_id = contents.header.get("run_id") or created
    for key, reason in contents.set_aside:
        if key in done:
            report.skipped += 1
        else:
            _set_aside(done_path, key, reason, path, report)
    todo = [(key, event) for key, event in contents.events if key not in done]
    report.skipped += len(contents.events) - len(todo)
    if contents.torn:
        report.warnings.append(f"{path}: the last line was cut short (a crash while writing "
                               "it) and is skipped")
    if run_id is None and todo:
        run_id = _create_run(client, contents.header, uri)
        mark_done(done_path, {"run_id": run_id})
    replayed = 0
    for key, event in todo:
        try:
            _replay_event(client, run_id, event, path, report)
        except Exception as err:
            if not _is_the_events_fault(err):
                raise
            why = redact_text(" ".join(f"{type(err).__name__}: {err}".split()))[:200]
            _set_aside(done_path, key, f"event {key} was refused ({why})", path, report)
            continue
        mark_done(done_path, {"id": key})
        replayed += 1
    report.replayed += replayed
    return run_id, replayed, len(contents.events) - len(todo)


def sync_spool(source: str | Path, tracking_uri: str | None = None,
               progress: Callable[[str], None] | None = None) -> SyncReport:
    """Replays a spool into the store the user names, each event at most once.

    A spool file is untrusted input: the store its header names is never contacted. Each
    file recorded for another store than `tracking_uri` is refused (`SyncReport.refused`),
    so that a planted file cannot draw the user's credentials (``MLFLOW_TRACKING_*``) or
    events to a server of its choosing; a malformed event is set aside with its reason; a
    checkpoint file is uploaded only if it is the checkpoint of the record it claims. One
    sync at a time per folder (a lock file in it).

    Args:
        source: A spool folder or one spool file.
        tracking_uri: Where to replay; default ``MLFLOW_TRACKING_URI``, else the default
            store.
        progress: Called with one line per file replayed.

    Raises:
        SpoolError: No such spool, another sync holds the folder, or the server is down
            (whatever was stored before stays marked as done).
    """
    from depth.tracking.store import default_tracking_uri, refused, store_client, unreachable

    named = tracking_uri is not None
    uri = tracking_uri or default_tracking_uri()
    files = spool_files(source)
    report = SyncReport()
    with folder_lock(Path(source) if Path(source).is_dir() else Path(source).parent):
        checked = []
        for path in files:
            try:
                contents = read_spool(path)
            except SpoolError as err:
                report.refused.append(str(err))
                continue
            if (why := _refusal(contents.header["tracking_uri"], uri, named)) is not None:
                report.refused.append(f"{path}: {why}")
            else:
                checked.append((path, contents))
        if checked and (why := unreachable(uri)) is not None:
            raise SpoolError(f"tracking server {redact(uri)} is unreachable ({why}); nothing "
                             f"replayed from {source}", status=1)
        client = store_client(uri) if checked else None
        for path, contents in checked:
            report.files += 1
            try:
                run_id, replayed, before = _replay_file(client, uri, path, contents, report)
            except Exception as err:
                reason = redact_text(" ".join(f"{type(err).__name__}: {err}".split()))[:300]
                again = ("run `depth sync` again with credentials that may write to its "
                         "experiment (EDIT)" if refused(err) else "run `depth sync` again")
                stopped = (f"{path}: replay stopped ({reason}); what was stored is marked "
                           f"done, {again}")
                if unreachable(uri) is not None:  # the server went away: stop here
                    raise SpoolError(stopped, status=1) from None
                report.failed.append(stopped)
                continue
            if run_id is not None:
                report.runs.append(run_id)
            if progress is not None:
                progress(f"{path.name}: {replayed} events replayed into run {run_id} at "
                         f"{redact(uri)}, {before} already there")
    return report
