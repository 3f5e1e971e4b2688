"""A new SQLite store opened by several processes at once (a fit and its writer process,
two fits on a team's first day): MLflow makes and migrates its tables with no lock, so
without `prepare_store`'s lock the losers fail and can leave the store half-migrated."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
from pathlib import Path

PROCESSES = 4


def _open_and_write(uri: str, barrier, results, index: int) -> None:
    import mlflow  # noqa: F401  (imported before the barrier: the opens then coincide)

    from depth.tracking.store import store_client

    barrier.wait()
    try:
        client = store_client(uri)
        client.create_experiment(f"fit-{index}")
        results.put((index, "ok"))
    except Exception as err:  # reported, not raised: the test names every failure
        results.put((index, f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"))


def test_processes_opening_a_new_store_at_once_all_succeed(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(PROCESSES), ctx.Queue()
    processes = [ctx.Process(target=_open_and_write, args=(uri, barrier, results, i))
                 for i in range(PROCESSES)]
    for process in processes:
        process.start()
    outcomes = dict(results.get(timeout=240) for _ in processes)
    for process in processes:
        process.join(timeout=60)
    assert outcomes == {i: "ok" for i in range(PROCESSES)}, outcomes
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        tables = {row[0] for row in db.execute("select name from sqlite_master")}
        names = {row[0] for row in db.execute("select name from experiments")}
    assert not any(t.startswith("_alembic_tmp") for t in tables), tables
    assert {f"fit-{i}" for i in range(PROCESSES)} <= names
    assert (tmp_path / "mlflow.db.lock").exists()  # the lock is where the README says
