"""MLflow metric writers against a real SQLite store."""

from __future__ import annotations

import time

from mlflow import MlflowClient

from depth.tracking.store import open_run
from depth.tracking.writer_process import MetricWriterProcess
from depth.tracking.writer_thread import BufferedMetricWriter


def steps_of(client, run_id, key):
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def ready(writer, timeout_s=120.0):
    """Waits until the writer process has imported MLflow (else a wait replaces it)."""
    deadline = time.monotonic() + timeout_s
    while not writer.ready and time.monotonic() < deadline:
        time.sleep(0.05)
    assert writer.ready
    return writer


def test_process_writer_stores_every_point_once(sqlite_run):
    uri, client, run_id = sqlite_run
    writer = ready(MetricWriterProcess(uri, run_id, interval_s=0.1))
    for step in range(1, 1201):  # more than one log_batch of 1000 metrics
        writer.log({"energy/joules": step * 2.0, "energy/watts": 5.0}, step)
    assert writer.flush(wait=True, timeout_s=120)
    writer.close()
    assert steps_of(client, run_id, "energy/joules") == list(range(1, 1201))
    assert steps_of(client, run_id, "energy/watts") == list(range(1, 1201))
    assert writer.pending == 0 and writer.error is None


def test_writer_process_death_loses_nothing(sqlite_run):
    uri, client, run_id = sqlite_run
    writer = ready(MetricWriterProcess(uri, run_id, interval_s=0.1))
    for step in range(1, 101):
        writer.log({"energy/joules": float(step)}, step)
    writer.flush(wait=True, timeout_s=120)
    writer._proc.kill()  # the writer process dies mid-run
    writer._proc.wait()
    for step in range(101, 201):
        writer.log({"energy/joules": float(step)}, step)
    writer.publish_checkpoint({"train_joules": 200.0, "optimizer_steps": 200}, 200)
    deadline = time.monotonic() + 30
    while writer.error is None and time.monotonic() < deadline:
        time.sleep(0.05)
    writer.close()
    assert steps_of(client, run_id, "energy/joules") == list(range(1, 201))
    assert [step for step, _ in writer.models] == [200]  # the record went through too
    model = client.get_logged_model(writer.models[0][1])
    assert model.tags["depth.train_joules"] == "200.0"  # every digit kept (repr)


def test_closing_before_the_writer_is_ready_writes_here_without_waiting(sqlite_run):
    uri, client, run_id = sqlite_run
    writer = MetricWriterProcess(uri, run_id, interval_s=0.1)
    for step in range(1, 6):  # a short fit: done while the process still imports MLflow
        writer.log({"energy/joules": float(step)}, step)
    writer.publish_checkpoint({"train_joules": 5.0, "optimizer_steps": 5}, 5)
    writer.close()
    assert writer.replaced and not writer.ready and writer.error is None
    assert writer._proc.poll() is not None  # the process is gone, not left running
    assert steps_of(client, run_id, "energy/joules") == [1, 2, 3, 4, 5]
    assert [step for step, _ in writer.models] == [5]
    assert len(client.search_logged_models([client.get_run(run_id).info.experiment_id])) == 1


def test_a_ready_writer_is_not_replaced(sqlite_run):
    uri, client, run_id = sqlite_run
    writer = ready(MetricWriterProcess(uri, run_id, interval_s=0.1))
    writer.log({"energy/joules": 1.0}, 1)
    assert writer.flush(wait=True, timeout_s=120)
    writer.close()
    assert writer.ready and not writer.replaced
    assert steps_of(client, run_id, "energy/joules") == [1]


def test_thread_writer_stores_every_point_once(sqlite_run):
    uri, client, run_id = sqlite_run
    writer = BufferedMetricWriter(client, run_id, interval_s=0.1)
    for step in range(1, 301):
        writer.log({"energy/joules": float(step)}, step)
    writer.close()
    assert steps_of(client, run_id, "energy/joules") == list(range(1, 301))


def test_an_own_run_writer_that_dies_before_creating_the_run_is_replaced_here(tmp_path):
    """The own run's writer process creates the run; if it dies first, the run is opened
    here, and every point and the run's end still reach the store."""
    from mlflow import MlflowClient

    from depth.tracking.spool import Spool

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    spool = Spool(tmp_path / "spool", uri, None, experiment_name="dies")
    writer = MetricWriterProcess(uri, None, interval_s=0.1, spool=spool,
                                 own_run=("dies", "dies-early"))
    writer._proc.kill()  # before it imported MLflow, let alone created the run
    writer._proc.wait()
    for step in range(1, 6):
        writer.log({"energy/joules": float(step)}, step)
    deadline = time.monotonic() + 60
    while writer.error is None and time.monotonic() < deadline:
        time.sleep(0.05)
    writer.close("FAILED")
    assert writer.run_id is not None and not writer.handed_off
    client = MlflowClient(uri)
    run = client.get_run(writer.run_id)
    assert run.info.run_name == "dies-early" and run.info.status == "FAILED"
    assert steps_of(client, writer.run_id, "energy/joules") == [1, 2, 3, 4, 5]
    assert not spool.path.exists()  # nothing needed the spool


def test_opening_a_run_again_with_its_token_returns_that_run(tmp_path):
    # The writer retries a create that timed out on a busy server (which may have created
    # the run anyway): with its token, the retry finds that run instead of adding an empty one
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    _, first = open_run("tokens", "a", uri, token="t-1")
    _, again = open_run("tokens", "a", uri, token="t-1")
    _, other = open_run("tokens", "b", uri, token="t-2")
    assert again == first and other != first
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("tokens").experiment_id])
    assert sorted(r.info.run_id for r in runs) == sorted({first, other})


def test_a_refusal_by_the_server_is_not_retried_but_an_outage_is():
    from mlflow.exceptions import MlflowException, RestException

    from depth.tracking.store import refused

    assert refused(RestException({"error_code": "PERMISSION_DENIED", "message": "no"}))
    assert refused(MlflowException("API request to endpoint /api/2.0/mlflow/runs/create "
                                   "failed with error code 401 != 200. Response body: ''"))
    assert not refused(MlflowException("API request to endpoint /x failed with error code "
                                       "503 != 200"))
    assert not refused(ConnectionError("Connection refused"))
