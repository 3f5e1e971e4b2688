"""Soak: a long synthetic run of the ledger, the crash sidecar and the MLflow writer.

Usage:
    python scripts/soak_ledger.py [--steps 100000] [--pace-s 0.001] [--json OUT.json]

No model and no real meter: a fake counter (200 W, refreshed every 100 ms of simulated
time, read at 10 ms simulated steps, like NVML under a fast training loop; the loop is
paced at `--pace-s` wall seconds per step, 1 ms by default: ten times faster than those
steps, so that 100,000 of them take ~100 s) feeds
`depth.accounting.ledger.Ledger` exactly as `DepthCallback` does (one `step` per optimizer step,
`pop_points` every step, a `state_dict` every 1,000 steps as a checkpoint would). The
points go to a real `MetricWriterProcess` on a SQLite store, and the crash sidecar is
rewritten from the ledger about every second of wall time. Reported every 10,000 steps:
Python heap in use (tracemalloc), process RSS, the state_dict's JSON size and the
sidecar's size; at the end, ledger cost per step and the writer's sustained throughput
(metric rows stored per second, waiting for every acknowledgement).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import tempfile
import time
import tracemalloc
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from depth.accounting.ledger import Ledger  # noqa: E402
from depth.lightning.sidecar import SidecarWriter  # noqa: E402
from depth.tracking.writer_process import MetricWriterProcess  # noqa: E402


def rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--pace-s", type=float, default=0.001,
                        help="Wall seconds per step (0: as fast as possible, which outruns "
                        "the writer and measures its backlog instead of a steady state).")
    args = parser.parse_args()
    from mlflow import MlflowClient

    tmp = Path(tempfile.mkdtemp(prefix="depth-soak-"))
    uri = f"sqlite:///{tmp}/soak.db"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("soak", str(tmp / "a"))).info.run_id
    writer = MetricWriterProcess(uri, run_id, interval_s=1.0)
    ledger = Ledger()
    step_s, update_s, watts = 0.010, 0.100, 200.0

    def counter(t: float) -> float:
        return math.floor(t / update_s) * update_s * watts

    t = 0.0
    ledger.begin(0, [(t, {"gpu:0": 0.0})], "fake-counter")
    reading = {"gpu:0": 0.0}
    sidecar = SidecarWriter(tmp / "depth-ledger.json",
                            lambda: {"devices": ledger.snapshot_devices(reading),
                                     "step": ledger.optimizer_steps}, interval_s=1.0)
    sidecar.start()
    tracemalloc.start()
    samples, ledger_s, rows = [], 0.0, 0
    wall0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        if args.pace_s:
            delay = wall0 + step * args.pace_s - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        t += step_s
        reading = {"gpu:0": counter(t)}
        t0 = time.perf_counter()
        ledger.step(step, [(t, reading)], tokens=2048)
        points = ledger.pop_points()
        ledger_s += time.perf_counter() - t0
        for p in points:
            metrics = {"energy/joules": p.joules, "energy/step_joules": p.step_joules,
                       "energy/watts": p.watts}
            if p.joules_per_token is not None:
                metrics["energy/joules_per_token"] = p.joules_per_token
            writer.log(metrics, p.step)
            rows += len(metrics)
        if step % 1000 == 0:
            state_size = len(json.dumps(ledger.state_dict([(t, reading)])))
        if step % 10_000 == 0:
            current, _ = tracemalloc.get_traced_memory()
            samples.append({"step": step, "heap_mb": current / 1e6, "rss_mb": rss_mb(),
                            "state_dict_bytes": state_size,
                            "sidecar_bytes": (tmp / "depth-ledger.json").stat().st_size,
                            "writer_pending_rows": writer.pending,
                            "wall_s": time.perf_counter() - wall0})
            print(json.dumps(samples[-1]), flush=True)
    ledger.end([(t + update_s, {"gpu:0": counter(t + update_s)})])
    for p in ledger.pop_points():
        writer.log({"energy/joules": p.joules}, p.step)
        rows += 1
    loop_s = time.perf_counter() - wall0
    sidecar.stop()
    t_flush = time.perf_counter()
    writer.close(timeout_s=3600)
    flush_wait_s = time.perf_counter() - t_flush
    stored = len(client.get_metric_history(run_id, "energy/joules"))
    total_j = ledger.state_dict()["train_joules"]
    result = {
        "date": date.today().isoformat(), "command": " ".join(["python", *sys.argv]),
        "steps": args.steps, "samples": samples,
        "ledger_us_per_step": 1e6 * ledger_s / args.steps,
        "loop_s": loop_s, "rows": rows, "stored_joules_points": stored,
        "flush_wait_after_loop_s": flush_wait_s,
        "writer_rows_per_s": rows / (loop_s + flush_wait_s),
        "closure_j": {"ledger": total_j, "counter": counter(t + update_s)},
        "heap_growth_mb": samples[-1]["heap_mb"] - samples[0]["heap_mb"] if samples else None,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
