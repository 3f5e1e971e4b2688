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
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from depth.accounting.ledger import Ledger, utc_now
from depth.lightning.ranks import Ranks

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


class CrashSidecar:
    """This rank's sidecar for one fit: whole-history joules per device, rewritten every
    `interval_s` from a fresh read of the meter.

    Args:
        directory: The checkpoint folder.
        ledger: The model's ledger, its fit segment open.
        ranks: This rank's meter and labels.
        baseline: This rank's reading when the segment opened.
        step: The latest optimizer step.
        interval_s: How often it is rewritten.
        on_error: Called once with a one-line message when it cannot be written.
    """

    def __init__(self, directory: Path, ledger: Ledger, ranks: Ranks,
                 baseline: Mapping[str, float], step: Callable[[], int], interval_s: float,
                 on_error: Callable[[str], None]):
        self._ledger, self._ranks, self._step = ledger, ranks, step
        self._base = {d: ledger.history_devices[d] - v for d, v in baseline.items()
                      if d not in ranks.excluded}
        self.writer = SidecarWriter(sidecar_path(directory, ranks.rank), self._snapshot,
                                    interval_s, on_error=on_error)
        self.writer.start()

    @property
    def failed(self) -> str | None:
        return self.writer.failed

    def _snapshot(self) -> dict[str, Any]:
        _, values = self._ranks.read_local()
        return {"schema": 1, "lineage_id": self._ledger.lineage_id, "rank": self._ranks.rank,
                "devices": {d: self._base[d] + v for d, v in values.items() if d in self._base},
                "step": self._step(), "method": self._ranks.method,
                "updated": utc_now(), "updated_unix": time.time()}

    def stop(self, final_write: bool) -> None:
        self.writer.stop(final_write=final_write)


def recover_wasted_work(directory: Path, ledger: Ledger, ranks: Ranks,
                        saved_unix: float | None, saved_at: str | None) -> None:
    """Adds to `ledger` the energy that the run which wrote the sidecars in `directory`
    spent after the checkpoint being resumed (saved at `saved_unix`), as a wasted segment.
    A collective: every rank calls it."""
    side = read_sidecar(sidecar_path(directory, ranks.rank))
    own: dict[str, Any] = {"devices": {}, "step": None}
    if side is not None and side.get("lineage_id") == ledger.lineage_id:
        own = {"devices": {d: float(j) - ledger.history_devices.get(d, 0.0)
                           for d, j in side["devices"].items()},
               "step": side.get("step"), "updated": side.get("updated"),
               "updated_unix": side.get("updated_unix"), "method": side.get("method")}
    every = ranks.gather_object(own)
    devices = {d: j for r in every for d, j in r["devices"].items() if j > 0}
    if not devices:
        return
    first = next(r for r in every if r["step"] is not None)
    wall_s = max(0.0, (first.get("updated_unix") or 0.0) - saved_unix) if saved_unix else 0.0
    ledger.add_wasted(
        start_step=ledger.optimizer_steps, end_step=int(first["step"]), devices=devices,
        wall_s=wall_s, started=saved_at or utc_now(), ended=first.get("updated"),
        method=first.get("method") or ranks.method,
        note=(f"energy spent after the checkpoint at step {ledger.optimizer_steps} by a run "
              f"that did not continue from it (to step {first['step']}), recovered from the "
              "crash sidecar; at most ~1 s of it is missing"))
