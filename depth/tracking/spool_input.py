"""A spool file read as untrusted input: its header, its events checked one by one, the
``.done`` bookkeeping, and the lock that lets one `depth sync` at a time replay a folder.

Anyone who can write to a spool folder can plant a file there, so nothing in one is
taken on trust: the header names the store it was recorded for, but `depth sync` only
compares that with the store the user named (`depth.tracking.spool.sync_spool`); an
event of the wrong shape is set aside with its reason (kept in the file, marked in
``.done``) rather than replayed or left to stop every later sync of the folder.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = 1
SUFFIX = ".jsonl"
DONE_SUFFIX = ".done"
LOCK_NAME = ".depth-sync.lock"
END_STATUSES = ("FINISHED", "FAILED", "KILLED")


class SpoolError(Exception):
    """A spool that cannot be read (`status` 2) or replayed (`status` 1); the message is one
    line for the CLI."""

    def __init__(self, message: str, status: int = 2):
        super().__init__(message)
        self.status = status


@dataclass
class SpoolContents:
    """One spool file, read and checked.

    Attributes:
        header: Its first line (``tracking_uri`` as recorded, credentials redacted).
        events: ``(key, event)`` of every well-formed event, in order, once per key.
        set_aside: ``(key, reason)`` of every malformed line (the reason names the line).
        torn: Whether the last line was cut short (a crash mid-write) and dropped.
    """

    header: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    set_aside: list[tuple[str, str]] = field(default_factory=list)
    torn: bool = False


def spool_files(source: str | Path) -> list[Path]:
    """The spool files at `source` (a spool folder or one ``.jsonl`` file)."""
    path = Path(source)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise SpoolError(f"{source}: no such spool folder or file")
    return sorted(path.glob(f"*{SUFFIX}"))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def event_problem(event: Mapping[str, Any]) -> str | None:
    """Why `event` cannot be replayed (a few words), or ``None`` when it has the shape
    `depth.tracking.spool.Spool` writes."""
    if "points" in event:
        points = event["points"]
        if not isinstance(points, list) or not all(
                isinstance(p, list) and len(p) == 4 and isinstance(p[0], str)
                and _is_number(p[1]) and _is_int(p[2]) and _is_int(p[3]) for p in points):
            return "points are not [key, value, timestamp_ms, step] lists"
        if any(p[0].startswith("energy/") and not 0 <= p[1] < math.inf for p in points):
            return "an energy point that is not a finite number >= 0"
        return None
    if "checkpoint" in event:
        checkpoint = event["checkpoint"]
        if not isinstance(checkpoint, dict) or not _is_int(checkpoint.get("step")):
            return "a checkpoint event without an integer step"
        if "file" in checkpoint:
            if not isinstance(checkpoint["file"], str) or not isinstance(
                    checkpoint.get("record_sha256"), str):
                return "a checkpoint file event without a file path and record_sha256"
            return None
        record = checkpoint.get("record")
        if not isinstance(record, dict) or not _is_number(record.get("train_joules")):
            return "a checkpoint event without a record (with train_joules)"
        return record_problem(record)

    if "end" in event:
        return None if event["end"] in END_STATUSES else \
            f"an end status other than {', '.join(END_STATUSES)}"
    return "not a spool event (no points, checkpoint or end)"


def record_problem(record: Mapping[str, Any]) -> str | None:
    """Why a spooled record may not be published: the checks `depth verify` makes of a
    record (its shape, its digest, finite joules), since anyone can write a spool line."""
    from depth.record.digest import record_sha256
    from depth.record.schema import check_record
    from depth.record.verify import bad_joules

    try:
        check_record(record)
    except ValueError as err:
        return f"its record is not one depth reads ({err})"
    if record.get("record_sha256") != record_sha256(record):
        return "its record does not match its record_sha256 (edited after it was sealed)"
    bad = bad_joules(record)
    return f"its record's {bad} is not energy" if bad else None


def _header_of(lines: list[str], path: Path) -> dict[str, Any]:
    try:
        header = json.loads(lines[0]) if lines else {}
    except ValueError:
        header = {}
    text_or_none = ("run_id", "experiment_name", "run_name")
    if not isinstance(header, dict) or header.get("spool") != SCHEMA \
            or not isinstance(header.get("tracking_uri"), str) \
            or not all(isinstance(header.get(k), (str, type(None))) for k in text_or_none) \
            or not (header.get("created_unix") is None or _is_number(header["created_unix"])):
        raise SpoolError(f"{path}: not a depth spool file (no spool header)")
    return header


def read_spool(path: Path) -> SpoolContents:
    """Reads and checks a spool file.

    Raises:
        SpoolError: It cannot be read, or has no spool header (status 2).
    """
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise SpoolError(f"{path}: cannot read ({getattr(err, 'strerror', None) or err})") \
            from None
    contents = SpoolContents(_header_of(lines, path))
    seen: set[str] = set()
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        key = f"line-{number}-{hashlib.sha256(line.encode()).hexdigest()[:16]}"
        try:
            event = json.loads(line)
        except ValueError:
            if number == len(lines):
                contents.torn = True
            else:
                contents.set_aside.append((key, f"line {number} is not JSON"))
            continue
        if not isinstance(event, dict) or not isinstance(event.get("id"), str):
            contents.set_aside.append((key, f"line {number}: not a spool event (no id)"))
            continue
        key = event["id"]
        if (problem := event_problem(event)) is not None:
            contents.set_aside.append((key, f"line {number}: {problem}"))
        elif key not in seen:
            seen.add(key)
            contents.events.append((key, event))
    return contents


def read_done(path: Path) -> tuple[set[str], str | None]:
    """The keys already replayed or set aside, and the run id a replay created."""
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
            done.update([entry["id"]] if isinstance(entry.get("id"), str) else [])
            run_id = entry.get("run_id", run_id)
    return done, run_id


def mark_done(path: Path, entry: Mapping[str, Any]) -> None:
    """Appends one entry to a ``.done`` file, on disk before it returns."""
    with open(path, "a") as f:
        f.write(json.dumps(dict(entry)) + "\n")
        f.flush()
        os.fsync(f.fileno())


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Holds the sync lock of a spool folder, or raises at once when another process holds
    it (two replays of one file would create its run twice).

    Raises:
        SpoolError: Another `depth sync` holds it (status 1), or it cannot be created.
    """
    import fcntl

    path = folder / LOCK_NAME
    try:
        handle = open(path, "a+")
    except OSError as err:
        raise SpoolError(f"{folder}: cannot create the sync lock {LOCK_NAME} "
                         f"({err.strerror})") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            pid = handle.read().strip()
            raise SpoolError(f"{folder} is already being synced by another `depth sync`"
                             f"{f' (pid {pid})' if pid.isdigit() else ''}; run it again once "
                             "that one has finished", status=1) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
