"""The spool and `depth sync`: replay into a real SQLite store, each event at most once."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from depth.record.provenance import Provenance
from depth.tracking.spool import Spool, SpoolError, SpoolSink, sync_spool


def record(step: int) -> dict:
    return Provenance(train_joules=10.0 * step, optimizer_steps=step, train_tokens=None,
                      devices={"cpu:0": 10.0 * step}, method="rapl", segments=[],
                      wasted_joules=0.0, weights_sha256=f"{step:064x}",
                      created="2026-11-22T00:00:00+00:00", hardware={}).sealed()


def history(client, run_id, key="energy/joules"):
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def models_of(client, run_id):
    experiment = client.get_run(run_id).info.experiment_id
    return [m for m in client.search_logged_models([experiment])
            if m.source_run_id == run_id]


def test_replay_stores_everything_once_even_when_run_twice(tmp_path, sqlite_run):
    uri, client, run_id = sqlite_run
    spool = Spool(tmp_path / "spool", uri, run_id)
    sink = SpoolSink(spool)
    for step in range(1, 51):
        sink.log({"energy/joules": float(step), "energy/watts": 2.0}, step)
        if step % 25 == 0:
            sink.publish_checkpoint(record(step), step)
    sink.close()
    first = sync_spool(tmp_path / "spool", tracking_uri=uri)
    assert first.points == 100 and first.skipped == 0 and first.runs == [run_id]
    assert history(client, run_id) == list(range(1, 51))
    assert sorted(m.tags["depth.step"] for m in models_of(client, run_id)) == ["25", "50"]
    again = sync_spool(tmp_path / "spool", tracking_uri=uri)
    assert again.replayed == 0 and again.skipped == first.replayed
    assert history(client, run_id) == list(range(1, 51))
    assert len(models_of(client, run_id)) == 2


def test_a_replay_cut_off_before_its_bookkeeping_still_writes_nothing_twice(tmp_path, sqlite_run):
    uri, client, run_id = sqlite_run
    spool = Spool(tmp_path / "spool", uri, run_id)
    spool.add_points([["energy/joules", float(s), 1_000 + s, s] for s in range(1, 11)])
    spool.add_checkpoints([{"record": record(10), "step": 10}])
    sync_spool(spool.path, tracking_uri=uri)
    spool.path.with_name(spool.path.name + ".done").unlink()  # stored, but not marked done
    report = sync_spool(spool.path, tracking_uri=uri)
    assert report.replayed == 2
    assert history(client, run_id) == list(range(1, 11))  # MLflow drops identical rows
    assert len(models_of(client, run_id)) == 1  # found by depth.record_sha256


def test_a_run_that_never_reached_the_server_is_created_once_with_its_end(tmp_path, sqlite_run):
    uri, client, _ = sqlite_run
    spool = Spool(tmp_path / "spool", uri, None, experiment_name="offline")
    sink = SpoolSink(spool)
    sink.log({"energy/joules": 5.0}, 1)
    sink.close("FAILED")
    report = sync_spool(tmp_path / "spool", tracking_uri=uri)
    (run_id,) = report.runs
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags["depth.spooled"] == "true"
    assert client.get_experiment(run.info.experiment_id).name == "offline"
    assert sync_spool(tmp_path / "spool", tracking_uri=uri).runs == [run_id]  # no second run
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_a_torn_last_line_is_skipped_and_reported(tmp_path, sqlite_run):
    uri, client, run_id = sqlite_run
    spool = Spool(tmp_path / "spool", uri, run_id)
    spool.add_points([["energy/joules", 1.0, 1_000, 1]])
    with open(spool.path, "a") as f:
        f.write('{"id": "x", "points": [["energy/jou')  # a crash mid-write
    report = sync_spool(spool.path, tracking_uri=uri)
    assert report.replayed == 1 and "cut short" in report.warnings[0]
    assert history(client, run_id) == [1]


def test_a_file_that_is_not_a_spool_is_refused(tmp_path):
    bad = tmp_path / "x.jsonl"
    bad.write_text(json.dumps({"hello": 1}) + "\n")
    report = sync_spool(bad)  # refused, not raised: it must not stop the rest of a folder
    assert report.files == 0 and len(report.refused) == 1
    assert "not a depth spool" in report.refused[0]
    with pytest.raises(SpoolError, match="no such spool"):
        sync_spool(tmp_path / "missing")


def test_nothing_is_written_until_something_is_spooled(tmp_path):
    spool = Spool(tmp_path / "spool", "sqlite:///x.db", "r1")
    SpoolSink(spool).close()
    assert not (tmp_path / "spool").exists()


def test_sync_cli_replays_and_bad_input_is_one_line(tmp_path, sqlite_run):
    uri, client, run_id = sqlite_run
    spool = Spool(tmp_path / "spool", uri, run_id)
    spool.add_points([["energy/joules", 3.0, 1_000, 3]])
    cli = [sys.executable, "-m", "depth.cli", "sync"]
    done = subprocess.run([*cli, str(tmp_path / "spool"), "--tracking-uri", uri],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "1 events replayed" in done.stdout
    assert history(client, run_id) == [3]
    bad = subprocess.run([*cli, str(tmp_path / "nowhere")], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
