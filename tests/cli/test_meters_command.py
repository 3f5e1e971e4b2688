"""`depth meters` as a user runs it: a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.doubles.powercap import FakePowercap


def depth(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "depth.cli", *args], capture_output=True,
                          text=True, timeout=120)


def test_json_names_the_estimate_and_why_nvml_and_rapl_were_rejected(tmp_path):
    out = depth("meters", "--json", "--seconds", "0.5", "--powercap-root", str(tmp_path / "none"))
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["method"] == "estimate" and result["measured"] is False
    rejected = {r["method"]: r["reason"] for r in result["rejected"]}
    assert "NVML" in rejected["nvml-counter"]
    assert "does not exist" in rejected["rapl"]
    assert set(result["devices"]) == {"cpu:0", "dram:0"}
    for device in result["devices"].values():
        assert device["method"] == "estimate"
        assert device["joules"] >= 0  # cpu:0 is this idle process's CPU-time share: ~0 J
        assert abs(device["watts"] - device["joules"] / result["seconds"]) < 1e-9
    assert result["devices"]["dram:0"]["joules"] > 0
    assert result["total_joules"] == sum(d["joules"] for d in result["devices"].values())


def test_fake_rapl_tree_is_chosen_for_the_cpu(tmp_path):
    FakePowercap.server(tmp_path)
    out = depth("meters", "--json", "--seconds", "0.2", "--powercap-root", str(tmp_path))
    result = json.loads(out.stdout)
    assert "rapl" in result["method"]
    assert result["devices"]["cpu:0"] == {"method": "rapl", "joules": 0.0, "watts": 0.0}


def test_table_output_lists_sources_and_readings(tmp_path):
    out = depth("meters", "--seconds", "0.2", "--powercap-root", str(tmp_path / "none"))
    assert out.returncode == 0
    assert "rejected  nvml-counter" in out.stdout and "chosen    estimate" in out.stdout
    assert "not measurements" in out.stdout


def test_bad_input_is_one_line_without_traceback():
    for args, needle in [(("--seconds", "-1"), "--seconds must be greater than 0"),
                         (("--seconds", "abc"), "seconds"),
                         (("--gpus", "x"), "--gpus takes CUDA ordinals"),
                         (("--cpu", "gpu"), "invalid choice")]:
        out = depth("meters", *args)
        assert out.returncode == 2, args
        assert "Traceback" not in out.stderr
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and needle in lines[0], out.stderr
