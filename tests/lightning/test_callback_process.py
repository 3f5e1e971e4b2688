"""DepthCallback across processes: resume, SIGKILL then resume, DDP on two ranks (gloo)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "support" / "train_tiny.py"
ROOT = Path(__file__).resolve().parents[2]


def train(directory: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, str(SCRIPT), "--dir", str(directory), *args],
                         capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def record(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)["depth"]


def test_resume_in_a_new_process_continues_the_count(tmp_path):
    train(tmp_path, "--max-steps", "6", "--every-n-steps", "3")
    first = record(tmp_path / "ckpt" / "last.ckpt")
    assert first["optimizer_steps"] == 6 and len(first["segments"]) == 1
    train(tmp_path, "--max-steps", "12", "--every-n-steps", "3",
          "--resume", str(tmp_path / "ckpt" / "last.ckpt"))
    final = record(tmp_path / "ckpt" / "last.ckpt")
    kinds = [s["kind"] for s in final["segments"]]
    assert kinds[0] == "fit" and kinds[-1] == "fit" and final["optimizer_steps"] == 12
    fits = [s for s in final["segments"] if s["kind"] == "fit"]
    assert [(s["start_step"], s["end_step"]) for s in fits] == [(0, 6), (6, 12)]
    # whole history: every segment, and more than the first run alone
    assert final["train_joules"] == pytest.approx(sum(s["joules"] for s in final["segments"]))
    assert final["train_joules"] > first["train_joules"]
    assert final["train_tokens"] == 12 * 32
    # the logged cumulative continues across the two processes
    rows = []
    for metrics in sorted((tmp_path / "logs").rglob("metrics.csv")):
        import csv

        rows += [r for r in csv.DictReader(metrics.open()) if r.get("energy/joules")]
    joules = {int(r["step"]): float(r["energy/joules"]) for r in rows}
    assert sorted(joules) == list(range(1, 13))
    assert joules[7] > joules[6]


def test_sigkill_between_checkpoints_then_resume_counts_the_lost_run_as_waste(tmp_path):
    power_w = 100.0
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--dir", str(tmp_path), "--max-steps", "400",
         "--every-n-steps", "5", "--sleep", "0.05", "--power", str(power_w),
         "--sidecar-interval", "0.2"], cwd=ROOT, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE)
    sidecar = tmp_path / "ckpt" / "depth-ledger.json"
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline:  # until it is well past a checkpoint
            if sidecar.exists() and (tmp_path / "ckpt" / "last.ckpt").exists():
                step = json.loads(sidecar.read_text()).get("step", 0)
                if step >= 13 and step % 5 in (2, 3):
                    break
            time.sleep(0.05)
        else:
            pytest.fail("training did not reach step 13")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed_unix = time.time()
    last = tmp_path / "ckpt" / "last.ckpt"
    saved = record(last)
    saved_state = torch.load(last, weights_only=False)["callbacks"]["DepthCallback"]
    train(tmp_path, "--max-steps", str(saved["optimizer_steps"] + 2), "--every-n-steps", "5",
          "--power", str(power_w), "--resume", str(last))
    final = record(tmp_path / "ckpt" / "last.ckpt")
    wasted = [s for s in final["segments"] if s["kind"] == "wasted"]
    assert len(wasted) == 1
    assert wasted[0]["start_step"] == saved["optimizer_steps"]
    assert wasted[0]["end_step"] > saved["optimizer_steps"]
    assert final["wasted_joules"] == pytest.approx(wasted[0]["joules"])
    # counted in the depth, not just reported
    assert final["train_joules"] == pytest.approx(sum(s["joules"] for s in final["segments"]))
    # at most ~1 s of the crashed run's energy after the checkpoint is missing
    true_waste_j = power_w * (killed_unix - saved_state["saved_unix"])
    assert true_waste_j - power_w * 1.2 <= final["wasted_joules"] <= true_waste_j + 1.0


def test_sigkill_during_checkpoint_write_leaves_no_partial_sidecar(tmp_path):
    """The sidecar and the checkpoints are replaced atomically: whatever moment the kill
    lands, they parse."""
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--dir", str(tmp_path), "--max-steps", "400",
         "--every-n-steps", "1", "--sidecar-interval", "0.01"], cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sidecar = tmp_path / "ckpt" / "depth-ledger.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not sidecar.exists():
        time.sleep(0.02)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    data = json.loads(sidecar.read_text())
    assert data["devices"]["gpu:0"] > 0
    # Lightning writes checkpoints through a temporary file and a rename: every one the
    # kill left behind is whole, and matches its record
    from depth.record.verify import OK, verify_checkpoint

    checkpoints = list((tmp_path / "ckpt").glob("*.ckpt"))
    assert checkpoints
    for path in checkpoints:
        assert verify_checkpoint(path).status == OK, path


def ddp(tmp_path: Path, *extra: str) -> dict:
    env = {**os.environ, "PL_DISABLE_FORK": "1"}
    out = subprocess.run([sys.executable, str(SCRIPT), "--dir", str(tmp_path), "--devices",
                          "2", "--max-steps", "6", "--every-n-steps", "3", *extra],
                         capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return {"record": record(tmp_path / "ckpt" / "last.ckpt"), "stderr": out.stderr}


def test_ddp_two_ranks_each_meter_their_own_device_and_totals_are_summed(tmp_path):
    result = ddp(tmp_path)
    rec = result["record"]
    devices = rec["devices"]
    assert set(devices) == {"node0/rank0/gpu:0", "node0/rank1/gpu:0"}
    # rank 1 draws 1100 W, rank 0 100 W: both metered, summed, never mixed up
    ratio = devices["node0/rank1/gpu:0"] / devices["node0/rank0/gpu:0"]
    assert 8 < ratio < 14
    assert rec["train_joules"] == pytest.approx(sum(devices.values()))
    assert rec["hardware"]["world_size"] == 2
    assert rec["train_tokens"] == 6 * 32 * 2  # both ranks' batches


def test_ddp_two_ranks_sharing_one_gpu_count_it_once(tmp_path):
    result = ddp(tmp_path, "--shared-uuid")
    assert set(result["record"]["devices"]) == {"node0/rank0/gpu:0"}
    assert "same GPU" in result["stderr"]


def test_two_nodes_on_loopback_meter_each_node_and_sum(tmp_path):
    """Two "nodes" of one rank each (NODE_RANK 0 and 1, MASTER_ADDR=127.0.0.1), launched
    as a multi-node job launches them: per-rank GPUs and each node's CPU, summed once."""
    from tests.support.mlflow_server import free_port

    port = str(free_port())
    procs = []
    for node in (0, 1):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
               "NODE_RANK": str(node), "LOCAL_RANK": "0", "WORLD_SIZE": "2",
               "PL_DISABLE_FORK": "1"}
        procs.append(subprocess.Popen(
            [sys.executable, str(SCRIPT), "--dir", str(tmp_path), "--num-nodes", "2",
             "--max-steps", "6", "--every-n-steps", "3", "--with-cpu"], cwd=ROOT, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    rec = record(tmp_path / "ckpt" / "last.ckpt")
    assert set(rec["devices"]) == {"node0/rank0/gpu:0", "node0/rank0/cpu:0",
                                   "node1/rank1/gpu:0", "node1/rank1/cpu:0"}
    assert rec["train_joules"] == pytest.approx(sum(rec["devices"].values()))
    assert rec["hardware"]["num_nodes"] == 2 and rec["hardware"]["world_size"] == 2
    assert {r["node"] for r in rec["hardware"]["ranks"]} == {0, 1}
