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

`sync_spool` replays the events not yet in ``.done`` and appends each id once its event is
stored, so a replay that is interrupted or run twice writes nothing twice. Should an event
be stored without its id reaching ``.done`` (a crash between the two), replaying it again
is still harmless: MLflow drops a metric row identical to one it has (same key, value,
timestamp and step), and a checkpoint's LoggedModel is found by its ``depth.record_sha256``
tag rather than created again.
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

from depth.tracking.store import redact  # stdlib-only at import
from depth.tracking.writer_thread import CheckpointEvents

SCHEMA = 1
SUFFIX = ".jsonl"
DONE_SUFFIX = ".done"


class SpoolError(Exception):
    """A spool that cannot be read (`status` 2) or replayed (`status` 1); the message is one
    line for the CLI."""

    def __init__(self, message: str, status: int = 2):
        super().__init__(message)
        self.status = status


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
        key = run_id or f"new-{uuid.uuid4().hex[:12]}"
        self.path = self.directory / f"{key}-{time.strftime('%Y%m%dT%H%M%S')}{SUFFIX}"
        # Credentials in the URI are not stored: `sync_spool` takes them from
        # MLFLOW_TRACKING_URI or its `tracking_uri` argument.
        self._header = {"spool": SCHEMA, "tracking_uri": redact(tracking_uri), "run_id": run_id,
                        "experiment_name": experiment_name, "run_name": run_name,
                        "created_unix": time.time()}
        self._lock = threading.Lock()
        self.events = 0
        self.points = 0

    def _append(self, event: dict[str, Any]) -> None:
        event = {"id": uuid.uuid4().hex, **event}
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

    def add_points(self, points: Sequence[Sequence[Any]]) -> None:
        """Spools ``(key, value, timestamp_ms, step)`` metric points."""
        if points:
            self._append({"points": [list(p) for p in points]})
            self.points += len(points)

    def add_checkpoints(self, events: Iterable[Mapping[str, Any]]) -> None:
        """Spools checkpoint events as the writers queue them (a record, or a file)."""
        for event in events:
            self._append({"checkpoint": dict(event)})

    def end(self, status: str) -> None:
        """Spools the end of the run (``FINISHED`` or ``FAILED``), for a run `sync_spool`
        creates or one depth opened itself."""
        self._append({"end": status})


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

    def close(self, failed: bool = False) -> None:
        """Spools what is buffered and, for a run that `sync_spool` will create, its end."""
        self.flush()
        if self.spool.run_id is None:
            self.spool.end("FAILED" if failed else "FINISHED")


# ---------------------------------------------------------------------------- replay


@dataclass
class SyncReport:
    """What `sync_spool` did."""

    files: int = 0
    replayed: int = 0
    skipped: int = 0  # already replayed before
    points: int = 0
    runs: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def spool_files(source: str | Path) -> list[Path]:
    """The spool files at `source` (a spool folder or one ``.jsonl`` file)."""
    path = Path(source)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise SpoolError(f"{source}: no such spool folder or file")
    return sorted(path.glob(f"*{SUFFIX}"))


def _read_events(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]], bool]:
    """The header, the events, and whether a torn last line (a crash mid-write) was dropped."""
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise SpoolError(f"{path}: cannot read ({err.strerror})") from None
    try:
        header = json.loads(lines[0]) if lines else {}
    except ValueError:
        header = {}
    if not isinstance(header, dict) or header.get("spool") != SCHEMA \
            or not isinstance(header.get("tracking_uri"), str):
        raise SpoolError(f"{path}: not a depth spool file (no spool header)")
    events, torn = [], False
    for number, line in enumerate(lines[1:], start=2):
        try:
            event = json.loads(line)
        except ValueError:
            if number != len(lines):
                raise SpoolError(f"{path}: line {number} is not JSON; the file was edited "
                                 "or damaged") from None
            torn = True
            continue
        if not isinstance(event, dict) or not isinstance(event.get("id"), str) or not (
                "points" in event or "checkpoint" in event or "end" in event):
            raise SpoolError(f"{path}: line {number} is not a spool event; the file was "
                             "edited or damaged")
        events.append(event)
    return header, events, torn


def _read_done(path: Path) -> tuple[set[str], str | None]:
    done, run_id = set(), None
    if path.exists():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a torn last line: that event is replayed again (idempotent)
            if not (isinstance(entry, dict) and any(isinstance(entry.get(k), str)
                                                    for k in ("id", "run_id"))):
                raise SpoolError(f"{path}: line {number} is not a replayed id or run id; the "
                                 "file was edited or damaged: fix or remove that line")
            done.update([entry["id"]] if "id" in entry else [])
            run_id = entry.get("run_id", run_id)
    return done, run_id


def _mark_done(path: Path, entry: Mapping[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(dict(entry)) + "\n")
        f.flush()
        os.fsync(f.fileno())


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


def _with_credentials(stored: str) -> str:
    """The URI a spool was meant for: as stored, or, when its credentials were redacted,
    ``MLFLOW_TRACKING_URI`` if that is the same server."""
    if "***@" not in stored:
        return stored
    env = os.environ.get("MLFLOW_TRACKING_URI", "")
    if env and redact(env) == stored:
        return env
    raise SpoolError(f"the spool was meant for {stored}, whose credentials are not stored: "
                     "set MLFLOW_TRACKING_URI to it or pass --tracking-uri", status=2)


def sync_spool(source: str | Path, tracking_uri: str | None = None,
               progress: Callable[[str], None] | None = None) -> SyncReport:
    """Replays a spool into a tracking server, each event at most once.

    Args:
        source: A spool folder or one spool file.
        tracking_uri: Where to replay; default: the URI each file was meant for.
        progress: Called with one line per file replayed.

    Raises:
        SpoolError: A file is not a spool, or the target refuses the events (the message
            says which; whatever was stored before stays marked as done).
    """
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from depth.tracking.publish import publish_event
    from depth.tracking.store import unreachable
    from depth.tracking.writer_thread import MAX_METRICS_PER_BATCH

    report = SyncReport()
    for path in spool_files(source):
        header, events, torn = _read_events(path)
        uri = tracking_uri or _with_credentials(header["tracking_uri"])
        if (why := unreachable(uri)) is not None:
            raise SpoolError(f"tracking server {redact(uri)} is unreachable ({why}); nothing "
                             f"replayed from {path}", status=1)
        done_path = path.with_name(path.name + DONE_SUFFIX)
        done, created = _read_done(done_path)
        client = MlflowClient(uri)
        run_id = header.get("run_id") or created
        todo = [e for e in events if e.get("id") not in done]
        report.files += 1
        report.skipped += len(events) - len(todo)
        if torn:
            report.warnings.append(f"{path}: the last line was cut short (a crash while "
                                   "writing it) and is skipped")
        try:
            if run_id is None and todo:
                run_id = _create_run(client, header, uri)
                _mark_done(done_path, {"run_id": run_id})
            for event in todo:
                if "points" in event:
                    metrics = [Metric(k, float(v), int(ts), int(s)) for k, v, ts, s in
                               event["points"]]
                    for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
                        client.log_batch(run_id, metrics=metrics[i:i + MAX_METRICS_PER_BATCH])
                    report.points += len(metrics)
                elif "checkpoint" in event:
                    message = publish_event(client, run_id, event["checkpoint"])[1]
                    if message:
                        report.warnings.append(f"{path}: {message}")
                elif "end" in event:
                    client.set_terminated(run_id, event["end"])
                _mark_done(done_path, {"id": event["id"]})
                report.replayed += 1
        except SpoolError:
            raise
        except Exception as err:
            reason = f"{type(err).__name__}: {err}".splitlines()[0]
            raise SpoolError(f"{path}: replay stopped ({reason}); what was stored is marked "
                             "done, run `depth sync` again", status=1) from None
        if run_id is not None:
            report.runs.append(run_id)
        if progress is not None:
            progress(f"{path.name}: {len(todo)} events replayed into run {run_id} at "
                     f"{redact(uri)}, {len(events) - len(todo)} already there")
    return report
