"""The crash sidecar: a small JSON ledger beside the checkpoints, rewritten about every second.

After a SIGKILL nothing runs, so the energy spent since the last checkpoint would be lost.
The sidecar holds each rank's whole-history joules per device as of at most
`interval_s` ago; a resume from a checkpoint in the same folder turns the difference into
a *wasted* segment. Writes are atomic (temporary file, then ``os.replace``): a reader sees
the previous version or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

NAME = "depth-ledger"


def sidecar_path(directory: str | Path, rank: int = 0) -> Path:
    """``depth-ledger.json`` for rank 0, ``depth-ledger.rank<N>.json`` for the others."""
    suffix = "" if rank == 0 else f".rank{rank}"
    return Path(directory) / f"{NAME}{suffix}.json"


def write_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Writes JSON so that readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":")))
    os.replace(tmp, path)


def read_sidecar(path: Path) -> dict[str, Any] | None:
    """The sidecar's content, or ``None`` when it is missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "devices" in data else None


class SidecarWriter:
    """Rewrites the sidecar from `snapshot()` every `interval_s` on a daemon thread.

    A failing write (read-only folder, full disk) never stops training: `on_error` is
    called once with a one-line message and ``failed`` is set, so records can say so.
    """

    def __init__(self, path: Path, snapshot: Callable[[], Mapping[str, Any]],
                 interval_s: float = 1.0, on_error: Callable[[str], None] | None = None):
        self.path = path
        self._snapshot = snapshot
        self.interval_s = interval_s
        self._on_error = on_error or (lambda message: None)
        self.failed: str | None = None
        self.writes = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="depth-sidecar", daemon=True)

    def start(self) -> None:
        self.write_now()
        self._thread.start()

    def write_now(self) -> None:
        with self._lock:
            try:
                write_atomic(self.path, self._snapshot())
                self.writes += 1
            except OSError as err:
                if self.failed is None:
                    self.failed = f"crash sidecar {self.path} not written ({err.strerror or err})"
                    self._on_error(self.failed)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.write_now()

    def stop(self, final_write: bool = True) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if final_write:
            self.write_now()
