"""The MLflow metric writer process: ``python -m depth.metric_writer URI RUN_ID``.

Reads JSON lines on stdin, one batch each: ``{"seq": N, "points": [[key, value,
timestamp_ms, step], ...], "checkpoints": [{"record": {...}, "step": S}, ...]}``, writes
the points with ``MlflowClient.log_batch`` (at most 1000 metrics per call), publishes each
checkpoint's record (`depth.mlflow_publish.publish_checkpoint`), and answers
``{"ack": N, "models": [[S, model_id], ...]}`` on stdout once batch N is stored, or
``{"error": "..."}`` while retrying and ``{"failed": N}`` after RETRY_S. End of input (the
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
RETRY_S = 30.0  # per batch; then it is reported as failed and the trainer keeps it


def _send(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _with_retry(write: Callable[[], object]) -> bool:
    """Runs `write`, retrying with backoff for up to RETRY_S; False if it never succeeded."""
    delay, give_up = 0.5, time.monotonic() + RETRY_S
    while True:
        try:
            write()
            return True
        except Exception as err:  # store busy or unreachable: say so, retry
            _send({"error": f"{type(err).__name__}: {err}".splitlines()[0]})
            if time.monotonic() > give_up:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def _publish(client: Any, run_id: str, event: dict[str, Any], models: list[list[Any]]) -> None:
    from depth.mlflow_publish import publish_checkpoint

    model_id = publish_checkpoint(client, run_id, event["record"], event["step"])
    models.append([event["step"], model_id])


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m depth.metric_writer TRACKING_URI RUN_ID", file=sys.stderr)
        return 2
    uri, run_id = args
    try:  # yield the CPU to training: write in the gaps (Python-only stretches, I/O waits)
        os.nice(19)
    except OSError:
        pass
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(tracking_uri=uri)
    _send({"ready": True})
    for line in sys.stdin:
        message = json.loads(line)
        metrics = [Metric(k, float(v), int(ts), int(step)) for k, v, ts, step in message["points"]]
        chunks = [metrics[i:i + MAX_METRICS_PER_BATCH]
                  for i in range(0, len(metrics), MAX_METRICS_PER_BATCH)]
        stored = all(_with_retry(lambda c=c: client.log_batch(run_id, metrics=c))
                     for c in chunks)
        models: list[list[Any]] = []
        for event in message.get("checkpoints", []) if stored else []:
            stored = _with_retry(partial(_publish, client, run_id, event, models))
            if not stored:
                break
        _send({"ack": message["seq"], "models": models} if stored else {"failed": message["seq"]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
