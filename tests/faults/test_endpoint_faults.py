"""`depth eval --endpoint` given what it cannot measure honestly: one line naming the
option and the fix, exit 2, nothing measured (issue 14.3)."""

from __future__ import annotations

import pytest

from depth.cli import main
from tests.support.mlflow_server import free_port


def run(capsys, *argv):
    status = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return status, err


def local() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there


@pytest.mark.parametrize(("argv", "expected"), [
    (["--endpoint", "http://192.0.2.7:8000/v1", "--model-name", "m"], "is not this machine"),
    (["--endpoint", "ftp://127.0.0.1/v1", "--model-name", "m"], "--endpoint takes http://"),
    (["--endpoint", "http://127.0.0.1:8000/v1"], "--endpoint needs --model-name"),
    (["ckpt.ckpt", "--endpoint", "http://127.0.0.1:8000/v1", "--model-name", "m"],
     "name the trained model with --source"),
    (["--endpoint", "http://127.0.0.1:8000/v1", "--model-name", "m", "--batch-sizes", "1,2"],
     "--batch-sizes does not apply to --endpoint"),
    (["--endpoint", "http://127.0.0.1:8000/v1", "--model-name", "m", "--concurrency", "0"],
     "--concurrency takes positive integers"),
    ([], "give a checkpoint to measure, or --endpoint"),
])
def test_bad_options_are_one_line(capsys, argv, expected):
    status, err = run(capsys, "eval", *argv, "--no-log")
    assert status == 2 and expected in err and len(err.splitlines()) == 1, err


def test_the_estimate_of_this_process_is_refused_for_a_server(capsys):
    """No sensor and no server process to bill: the estimate of depth's own process would
    see only its request threads, not the server's work, so nothing is measured."""
    status, err = run(capsys, "eval", "--endpoint", local(), "--model-name", "m",
                      "--meter", "estimate", "--no-log")
    assert status == 2 and len(err.splitlines()) == 1
    assert "would not see the server's work" in err and "--server-pid" in err


def test_a_source_without_a_record_is_refused_before_measuring(capsys, tmp_path):
    status, err = run(capsys, "eval", "--endpoint", local(), "--model-name", "m",
                      "--source", str(tmp_path / "missing.ckpt"), "--no-log")
    assert status == 2 and "missing.ckpt" in err and len(err.splitlines()) == 1


def test_no_server_listening_is_one_line(capsys):
    import os

    status, err = run(capsys, "eval", "--endpoint", local(), "--model-name", "m",
                      "--meter", "estimate", "--server-pid", str(os.getpid()), "--idle-s", "0",
                      "--no-log")
    assert status == 2 and "no answer" in err and len(err.splitlines()) == 1
