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

Why a process: MLflow's SQLAlchemy store spends ~0.3 ms of Python per metric row; a
thread in the training process would hold the GIL for a quarter of every second at one
point per 10 ms step.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

MAX_METRICS_PER_BATCH = 1000
RETRY_S = 30.0  # per batch while the store was working; then the trainer spools the batch
# MLflow's own HTTP client retries a dead server for minutes (7 retries, backoff 2); here
# every attempt fails at once and the retrying is ours, so an outage shows within a second.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}


def _send(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _with_retry(write: Callable[[], object], budget_s: float) -> bool:
    """Runs `write`, retrying with backoff for up to `budget_s` (0: one attempt); False if
    it never succeeded."""
    delay, give_up = 0.5, time.monotonic() + budget_s
    while True:
        try:
            write()
            return True
        except Exception as err:  # store busy or unreachable: say so, retry
            from depth.tracking.store import redact_text  # MLflow names the URL, password too

            _send({"error": redact_text(f"{type(err).__name__}: {err}".splitlines()[0])})
            if time.monotonic() + delay > give_up:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def _publish(client: Any, run_id: str, event: dict[str, Any], models: list[list[Any]]) -> None:
    from depth.tracking.publish import publish_event

    model_id, problem = publish_event(client, run_id, event)
    if model_id is not None:
        models.append([event["step"], model_id])
    if problem:
        _send({"warning": problem})


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3):
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
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(tracking_uri=uri)
    _send({"ready": True})
    down = False  # the last batch failed: try each batch once until one goes through
    for line in sys.stdin:
        message = json.loads(line)
        budget = 0.0 if down else retry_s
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
        down = not stored
        _send({"ack": message["seq"], "models": models} if stored else {"failed": message["seq"]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
