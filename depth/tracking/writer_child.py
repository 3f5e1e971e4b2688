"""The MLflow metric writer process: ``python -m depth.tracking.writer_child URI RUN_ID [RETRY_S]``.

Reads JSON lines on stdin, one batch each: ``{"seq": N, "points": [[key, value,
timestamp_ms, step], ...], "checkpoints": [{"record": {...}, "step": S}, ...]}``, writes
the points with ``MlflowClient.log_batch`` (at most 1000 metrics per call), publishes each
checkpoint's record (`depth.tracking.publish.publish_checkpoint`), and answers
``{"ack": N, "models": [[S, model_id], ...]}`` on stdout once batch N is stored, or
``{"error": "..."}`` while retrying and ``{"failed": N}`` after RETRY_S (the trainer then
spools batch N; see `depth.tracking.spool`), and ``{"warning": "..."}`` for a checkpoint file that
could not be uploaded. After a failed batch, each batch gets one attempt until one goes
through, so an outage costs the trainer nothing but spool lines. End of input (the
trainer finished, or died) means: write what is left and exit.

With RUN_ID ``-`` the writer opens the run itself (experiment and name in
``DEPTH_WRITER_NEW_RUN``, JSON) and answers ``{"run": RUN_ID}``, so that the training
process never imports MLflow for the run depth opens. A last ``{"handoff": {...}}`` line
(`depth.tracking.handoff`) hands it the run's end: the trainer has returned by then and
no longer waits; what this process has not stored is in the spool.

Why a process: MLflow's SQLAlchemy store spends ~0.3 ms of Python per metric row; a
thread in the training process would hold the GIL for a quarter of every second at one
point per 10 ms step.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

MAX_METRICS_PER_BATCH = 1000
RETRY_S = 30.0  # per batch while the store was working; then the trainer spools the batch
# MLflow's own HTTP client retries a dead server for minutes (7 retries, backoff 2); here
# every attempt fails at once and the retrying is ours, so an outage shows within a second.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}


NEW_RUN_ENV = "DEPTH_WRITER_NEW_RUN"  # {"experiment_name", "run_name", "spool"} for RUN_ID "-"


def _send(obj: dict) -> None:
    """One reply line; once the trainer has gone (its process exited after handing off),
    replies go nowhere and the writing goes on."""
    try:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()
    except (OSError, ValueError):
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the rest of the process


def _read_ahead(lines: queue.Queue) -> None:
    """Reads stdin as it comes, even while MLflow is imported, so that the trainer's writes
    never wait on a full pipe; ``None`` marks the end of input."""
    for line in sys.stdin:
        lines.put(line)
    lines.put(None)


def _with_retry(write: Callable[[], object], budget_s: float) -> bool:
    """Runs `write`, retrying with backoff for up to `budget_s` (0: one attempt); False if
    it never succeeded, or at once when the server refuses (`refused`)."""
    delay, give_up = 0.5, time.monotonic() + budget_s
    while True:
        try:
            write()
            return True
        except Exception as err:  # store busy or unreachable: say so, retry
            from depth.tracking.store import redact_text, refused  # MLflow names the URL

            _send({"error": redact_text(f"{type(err).__name__}: {err}".splitlines()[0])})
            if refused(err) or time.monotonic() + delay > give_up:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def _client(make: Callable[[str], Any], uri: str, attempts: int = 6) -> Any:
    """The store's client (a new SQLite store is made under its lock: `prepare_store`),
    tried again while the store is busy or not yet answering."""
    for attempt in range(attempts):
        try:
            return make(uri)
        except Exception:
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))


def _publish(client: Any, run_id: str, event: dict[str, Any], models: list[list[Any]]) -> None:
    from depth.tracking.publish import publish_event

    model_id, problem = publish_event(client, run_id, event)
    if model_id is not None:
        models.append([event["step"], model_id])
    if problem:
        _send({"warning": problem})


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3):  # RUN_ID "-": open one (NEW_RUN_ENV)
        print("usage: python -m depth.tracking.writer_child TRACKING_URI RUN_ID [RETRY_S]",
              file=sys.stderr)
        return 2
    uri, run_id = args[:2]
    if uri == "-":  # given through the environment (a URI may carry credentials)
        uri = os.environ["DEPTH_WRITER_TRACKING_URI"]
    retry_s = float(args[2]) if len(args) == 3 else RETRY_S
    try:  # yield the CPU to training: write in the gaps (Python-only stretches, I/O waits)
        os.nice(19)
    except OSError:
        pass
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_read_ahead, args=(lines,), daemon=True).start()
    from depth.tracking.store import store_client

    client = _client(store_client, uri)
    new_run = json.loads(os.environ[NEW_RUN_ENV]) if run_id == "-" else None
    run_id = _open_run(uri, new_run, retry_s) if new_run is not None else run_id
    _send({"ready": True})
    down = run_id is None  # the last batch failed: try each batch once until one goes through
    stored_seqs: set[int] = set()
    while (line := lines.get()) is not None:
        message = json.loads(line)
        if "handoff" in message:
            _finish(client, uri, run_id, message["handoff"], stored_seqs, retry_s)
            break
        budget = 0.0 if down else retry_s
        if run_id is None and new_run is not None:  # the store refused to create it
            run_id = _open_run(uri, new_run, budget)
        if run_id is None:
            _send({"failed": message["seq"]})  # the trainer spools it; `depth sync` creates the run
            continue
        stored = _store(client, run_id, message, budget)
        down = not stored
        if stored:
            stored_seqs.add(message["seq"])
    return 0


def _store(client: Any, run_id: str, message: dict[str, Any], budget: float) -> bool:
    """Stores one batch (points, then checkpoint events) and answers for it."""
    from mlflow.entities import Metric

    metrics = [Metric(k, float(v), int(ts), int(step)) for k, v, ts, step in message["points"]]
    chunks = [metrics[i:i + MAX_METRICS_PER_BATCH]
              for i in range(0, len(metrics), MAX_METRICS_PER_BATCH)]
    stored = all(_with_retry(lambda c=c: client.log_batch(run_id, metrics=c), budget)
                 for c in chunks)
    models: list[list[Any]] = []
    for event in message.get("checkpoints", []) if stored else []:
        stored = _with_retry(partial(_publish, client, run_id, event, models), budget)
        if not stored:
            break
    _send({"ack": message["seq"], "models": models} if stored else {"failed": message["seq"]})
    return stored


def _open_run(uri: str, new_run: dict[str, Any], budget: float) -> str | None:
    """Creates the run depth opens itself; says which (``{"run": ...}``) and notes it in
    the spool's ``.done``, so that `depth sync` replays spooled events into it."""
    from depth.tracking.spool_input import DONE_SUFFIX, mark_done
    from depth.tracking.store import open_run

    opened: list[str] = []
    token = new_run.get("token")  # the trainer's (`MetricWriterProcess`): same over retries
    if not _with_retry(lambda: opened.append(open_run(new_run["experiment_name"],
                                                      new_run["run_name"], uri, token)[1]),
                       budget):
        return None
    _send({"run": opened[0]})
    spool = new_run.get("spool")
    if spool and os.path.exists(spool):  # the trainer spooled before the run existed
        mark_done(f"{spool}{DONE_SUFFIX}", {"run_id": opened[0]})
    return opened[0]


def _finish(client: Any, uri: str, run_id: str | None, handoff: dict[str, Any],
            stored_seqs: set[int], retry_s: float) -> None:
    from depth.tracking.handoff import finish_handoff
    from depth.tracking.store import urls_unprinted

    def end_run(status: str) -> bool:
        with urls_unprinted(uri):
            return _with_retry(lambda: client.set_terminated(run_id, status), retry_s)

    finish_handoff(handoff, run_id, stored_seqs, end_run)
    _send({"finished": True})


if __name__ == "__main__":
    raise SystemExit(main())
