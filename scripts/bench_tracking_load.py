"""A team's tracking server under load: concurrent fits against MLflow's basic-auth server
on PostgreSQL (both started here on 127.0.0.1, as tests/support/postgres.py does).

1. Overhead: `--fits` concurrent fits (processes; one point per step, a checkpoint and
   LoggedModel every `--every-n-steps`, `--sleep-s` per step), with and without tracking,
   alternated round by round; the ratio of their fit wall times, and every point and
   LoggedModel counted on the server (exactly once each).
2. Outage: the same fits, the server killed `--kill-after-s` into them and restarted
   `--outage-s` later; then `depth sync` on every spool, and every point and LoggedModel
   counted again.
3. The MLflow writer process's sustained rows/s into PostgreSQL and into SQLite (each
   written directly by SQLAlchemy), and through the authenticated server.

Usage: python scripts/bench_tracking_load.py --out docs/bench_tracking_load-DATE-HOST.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.postgres import (ALICE, ALICE_PASSWORD, ADMIN,  # noqa: E402
                                    ADMIN_PASSWORD, PostgresCluster, team_server)

FIT = REPO / "tests" / "support" / "team_fit.py"


def launch_fits(root: Path, n: int, env: dict[str, str], args: argparse.Namespace,
                tracking: bool, experiment: str) -> list[subprocess.Popen]:
    """Starts `n` fits and returns once they all train (their imports done, started
    together)."""
    procs = []
    for i in range(n):
        d = root / f"fit{i}"
        d.mkdir(parents=True)
        procs.append(subprocess.Popen(
            [sys.executable, str(FIT), "--dir", str(d), "--steps", str(args.steps),
             "--sleep", str(args.sleep_s), "--every-n-steps", str(args.every_n_steps),
             "--experiment", experiment, "--go", str(root / "go"),
             *([] if tracking else ["--no-tracking"])],
            env={**os.environ, **env, "PYTHONPATH": str(REPO)}, cwd=d,
            stdout=subprocess.DEVNULL, stderr=open(d / "stderr.log", "w")))
    while not all((root / f"fit{i}" / "ready").exists() for i in range(n)):
        if any(p.poll() is not None for p in procs):
            raise RuntimeError(f"a fit under {root} exited before it started")
        time.sleep(0.1)
    (root / "go").touch()
    return procs


def finish(procs: list[subprocess.Popen], root: Path, timeout_s: float) -> list[dict[str, Any]]:
    summaries = []
    for i, p in enumerate(procs):
        if p.wait(timeout=timeout_s) != 0:
            raise RuntimeError(f"fit {i} failed: "
                               + (root / f"fit{i}" / "stderr.log").read_text()[-2000:])
        summaries.append(json.loads((root / f"fit{i}" / "summary.json").read_text()))
    return summaries


def count(client: Any, experiment_id: str, summaries: list[dict[str, Any]], steps: int,
          every: int) -> dict[str, Any]:
    """Points and LoggedModels on the server against those expected, per run: each step's
    energy/joules once, each checkpoint's LoggedModel once."""
    expected_models = list(range(every, steps + 1, every))
    missing = duplicated = models_wrong = 0
    runs = [s["run_id"] for s in summaries]
    models = [m for m in client.search_logged_models([experiment_id]) if "depth.step" in m.tags]
    for run_id in runs:
        points = [m.step for m in client.get_metric_history(run_id, "energy/joules")]
        missing += len(set(range(1, steps + 1)) - set(points))
        duplicated += len(points) - len(set(points))
        mine = sorted(int(m.tags["depth.step"]) for m in models if m.source_run_id == run_id)
        models_wrong += mine != expected_models
    return {"runs": len(set(runs)), "points_expected": len(runs) * steps,
            "points_missing": missing, "points_duplicated": duplicated,
            "models_expected": len(runs) * len(expected_models),
            "models_found": sum(m.source_run_id in runs for m in models),
            "runs_with_wrong_models": models_wrong}


def overhead(server: Any, args: argparse.Namespace, work: Path, client: Any) -> dict[str, Any]:
    env = {"MLFLOW_TRACKING_URI": server.uri, "MLFLOW_TRACKING_USERNAME": ALICE,
           "MLFLOW_TRACKING_PASSWORD": ALICE_PASSWORD}
    fit_s: dict[str, list[float]] = {"without": [], "with": []}
    counts = []
    experiment = "load"
    for r in range(args.rounds):
        for mode in ("without", "with"):  # alternated: the machine's load drifts
            root = work / f"overhead-{r}-{mode}"
            procs = launch_fits(root, args.fits, env, args, mode == "with", experiment)
            t0 = time.perf_counter()
            summaries = finish(procs, root, 900)
            print(f"round {r} {mode} tracking: {time.perf_counter() - t0:.1f} s wall, fits "
                  f"{statistics.median(s['fit_s'] for s in summaries):.1f} s median",
                  flush=True)
            fit_s[mode] += [s["fit_s"] for s in summaries]
            if mode == "with":
                spooled = list(root.glob("fit*/depth-spool/*.jsonl"))
                eid = client.get_experiment_by_name(experiment).experiment_id
                counts.append({**count(client, eid, summaries, args.steps,
                                       args.every_n_steps), "spool_files": len(spooled)})
    ideal = args.steps * args.sleep_s
    return {"fit_s_without": fit_s["without"], "fit_s_with": fit_s["with"],
            "median_fit_s_without": statistics.median(fit_s["without"]),
            "median_fit_s_with": statistics.median(fit_s["with"]),
            "ratio_with_over_without": (statistics.median(fit_s["with"])
                                        / statistics.median(fit_s["without"])),
            "sleep_only_s": ideal, "counts": counts}


def outage(server: Any, args: argparse.Namespace, work: Path, client: Any) -> dict[str, Any]:
    env = {"MLFLOW_TRACKING_URI": server.as_user(ALICE, ALICE_PASSWORD)}  # in the URI
    root = work / "outage"
    experiment = "load-outage"
    procs = launch_fits(root, args.fits, env, args, True, experiment)
    time.sleep(args.kill_after_s)
    server.stop()
    killed_at = time.time()
    time.sleep(args.outage_s)
    server.start()
    restarted_s = time.time() - killed_at
    summaries = finish(procs, root, 900)
    eid = client.get_experiment_by_name(experiment).experiment_id
    before = count(client, eid, summaries, args.steps, args.every_n_steps)
    syncs = []
    for spool in sorted(root.glob("fit*/depth-spool")):
        done = subprocess.run([sys.executable, "-m", "depth.cli", "sync", str(spool)],
                              env={**os.environ, **env, "PYTHONPATH": str(REPO)},
                              capture_output=True, text=True, timeout=600)
        syncs.append({"status": done.returncode, "said": done.stdout.strip()[-300:]})
    return {"killed_after_s": args.kill_after_s, "back_after_s": restarted_s,
            "before_sync": before, "syncs": syncs,
            "after_sync": count(client, eid, summaries, args.steps, args.every_n_steps)}


def writer_rows_per_s(uri: str, client: Any, experiment: str, rows: int) -> float:
    """Rows/s of `depth.tracking.writer_process.MetricWriterProcess` into `uri` (its
    process started and ready first: only the writing is timed)."""
    from depth.tracking.writer_process import MetricWriterProcess

    if client.get_experiment_by_name(experiment) is None:
        client.create_experiment(experiment)
    run_id = client.create_run(client.get_experiment_by_name(experiment).experiment_id
                               ).info.run_id
    writer = MetricWriterProcess(uri, run_id, interval_s=0.2)
    while not writer.ready:
        time.sleep(0.05)
    t0 = time.perf_counter()
    for step in range(rows // 4):
        writer.log({"energy/joules": step, "energy/step_joules": 1.0, "energy/watts": 100.0,
                    "energy/joules_per_token": 0.01}, step)
    stored = writer.flush(wait=True, timeout_s=600)
    elapsed = time.perf_counter() - t0
    writer.close()
    if not stored or len(client.get_metric_history(run_id, "energy/watts")) != rows // 4:
        raise RuntimeError(f"writer into {uri.split('@')[-1]} lost points")
    return rows / elapsed


def writers(server: Any, cluster: PostgresCluster, work: Path, rows: int) -> dict[str, Any]:
    from mlflow import MlflowClient

    pg = cluster.create_database("bench_rows", "bench", "bench-pw")
    sqlite = f"sqlite:///{work}/rows.db"
    authenticated = server.as_user(ALICE, ALICE_PASSWORD)
    out = {}
    for name, uri in (("sqlite", sqlite), ("postgresql", pg), ("server_on_postgresql",
                                                             authenticated)):
        out[name] = [writer_rows_per_s(uri, MlflowClient(uri), "rows", rows) for _ in range(2)]
        print(f"writer into {name}: {[f'{r:,.0f}' for r in out[name]]} rows/s", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fits", type=int, default=8)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--sleep-s", type=float, default=0.05)
    p.add_argument("--every-n-steps", type=int, default=50)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--workers", type=int, default=1, help="server worker processes (4 failed "
                   "to start here once: a worker died at startup, cause not captured)")
    p.add_argument("--kill-after-s", type=float, default=4.0,
                   help="seconds after the fits start training")
    p.add_argument("--outage-s", type=float, default=5.0)
    p.add_argument("--writer-rows", type=int, default=20000)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--note", default="",
                   help="what else ran on the machine (stored in the JSON as said)")
    args = p.parse_args()
    from mlflow import MlflowClient

    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"), "host": platform.node(),
        "cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "note": args.note}
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        work = Path(tmp)
        with team_server(work / "server", workers=args.workers) as server:
            admin = MlflowClient(server.as_user(ADMIN, ADMIN_PASSWORD))
            result["overhead"] = overhead(server, args, work, admin)
            result["outage"] = outage(server, args, work, admin)
            result["writer_rows_per_s"] = writers(server, server.cluster, work,
                                                  args.writer_rows)
    result["load_avg_at_end"] = os.getloadavg()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
