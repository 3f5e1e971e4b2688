"""Bad input to every command, through the real CLI: a non-zero exit and exactly one line
on stderr naming what is wrong, never a traceback, and found before any measuring.

One small GPT is trained once for the module (a real Trainer and a real SQLite MLflow
store); the cases that hang or need a real pipe run `depth` in a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from depth.cli import main
from depth.gpt.recipe import load_recipe
from depth.gpt.train import train
from depth.record.digest import CHECKPOINT_KEY, record_sha256
from depth.tracking.spool import Spool

SMALL = ["--model.n_layer", "1", "--model.n_head", "2", "--model.n_embd", "32",
         "--model.block_size", "48", "--train.batch_size", "4", "--train.val_batches", "2",
         "--train.val_every_n_steps", "4", "--train.progress_bar", "false",
         "--data.stdlib_glob", "json/*.py", "--data.val_fraction", "0.2",
         "--train.max_steps", "2"]
FAST_EVAL = ["--batch-sizes", "1", "--prompt-tokens", "4", "--new-tokens", "4",
             "--repeats", "1", "--min-window-s", "0.01", "--idle-s", "0",
             "--loss-batches", "0", "--no-log"]


def meter_available(name: str) -> bool:
    from depth.meters import MeterUnavailable, make_meter

    try:
        make_meter(name).close()
    except MeterUnavailable:
        return False
    return True


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("one-line")
    uri = f"sqlite:///{root}/mlflow.db"
    recipe = load_recipe("tiny-cpu", [*SMALL, "--tracking.tracking_uri", uri,
                                      "--tracking.experiment_name", "errors",
                                      "--data.cache_dir", str(root / "hf"),
                                      "--train.out_dir", str(root / "run")])
    result = train(recipe)
    return {"root": root, "uri": uri, "ckpt": result.checkpoint}


@pytest.fixture()
def ctx(trained, tmp_path) -> dict[str, Any]:
    """The trained model's paths, a copy of its checkpoint in this test's folder, and a
    regular file where a folder would have to be."""
    ckpt = tmp_path / "model.ckpt"
    shutil.copy(trained["ckpt"], ckpt)
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    return {**trained, "tmp": tmp_path, "copy": str(ckpt), "afile": afile}


def train_args(ctx: dict[str, Any], *extra: str) -> list[str]:
    return ["train", "tiny-cpu", *SMALL, "--tracking.enabled", "false",
            "--data.cache_dir", str(ctx["root"] / "hf"),
            "--train.out_dir", str(ctx["tmp"] / "out"), *extra]


def resealed(ctx: dict[str, Any], change: Callable[[dict[str, Any]], Any]) -> str:
    """A copy of the checkpoint whose record was changed by `change` and sealed again,
    so its digest matches: only the record's shape is wrong."""
    checkpoint = torch.load(ctx["copy"], weights_only=True)
    record = checkpoint[CHECKPOINT_KEY]
    change(record)
    record["record_sha256"] = record_sha256(record)
    path = ctx["tmp"] / "resealed.ckpt"
    torch.save(checkpoint, path)
    return str(path)


def lineage(ctx: dict[str, Any], generations: int, seal_all: bool = True) -> str:
    """A checkpoint whose record has `generations` generations, itself included (built
    here: no one trains 1,500 times). Without `seal_all` only the newest is sealed: a
    reader must refuse the depth before it digests anything."""
    checkpoint = torch.load(ctx["copy"], weights_only=True)
    base = {k: v for k, v in checkpoint[CHECKPOINT_KEY].items() if k != "parent"}
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * generations))  # sealing needs it; reading must not
    try:
        node = None
        for i in range(generations):
            node = {**base, "parent": node}
            if seal_all or i == generations - 1:
                node["record_sha256"] = record_sha256(node)
        checkpoint[CHECKPOINT_KEY] = node
        state = checkpoint.get("callbacks", {}).get("DepthCallback")
        if state is not None:  # as the callback saves it: its state names the same parent
            state["parent"] = node["parent"]
        path = ctx["tmp"] / f"lineage-{generations}.ckpt"
        torch.save(checkpoint, path)
    finally:
        sys.setrecursionlimit(limit)
    return str(path)


def deep_lineage(ctx: dict[str, Any]) -> str:
    return lineage(ctx, 1500, seal_all=False)


def with_eval_file(ctx: dict[str, Any], text: str) -> str:
    Path(ctx["copy"] + ".depth-eval.json").write_text(text)
    return ctx["copy"]


def spool_with_done(ctx: dict[str, Any], line: str) -> str:
    spool = Spool(ctx["tmp"] / "spool", ctx["uri"], None, experiment_name="errors")
    spool.add_points([["energy/joules", 1.0, 1_000, 1]])
    spool.path.with_name(spool.path.name + ".done").write_text(line + "\n")
    return str(ctx["tmp"] / "spool")


def non_utf8_recipe(ctx: dict[str, Any]) -> str:
    path = ctx["tmp"] / "latin1.yaml"
    path.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    return str(path)


def existing_output(ctx: dict[str, Any]) -> str:
    path = ctx["tmp"] / "README.md"
    path.write_text("my model card\n")
    return str(path)


Case = tuple[Callable[[dict[str, Any]], list[str]], str]
NO_RAPL = pytest.mark.skipif(meter_available("rapl"), reason="RAPL is readable here")
NO_NVML = pytest.mark.skipif(meter_available("nvml-counter"), reason="an NVML GPU is here")
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")

CASES: dict[str, Any] = {
    # eval: every option checked before the model is loaded or measured
    "eval-meter-rapl": pytest.param(
        lambda c: ["eval", c["copy"], *FAST_EVAL, "--meter", "rapl"], "--meter rapl",
        marks=NO_RAPL),
    "eval-meter-nvml": pytest.param(
        lambda c: ["eval", c["copy"], *FAST_EVAL, "--meter", "nvml-counter"],
        "--meter nvml-counter", marks=NO_NVML),
    "eval-device-cuda": pytest.param(
        lambda c: ["eval", c["copy"], *FAST_EVAL, "--device", "cuda"], "--device cuda",
        marks=NO_CUDA),
    "eval-device-bogus": (lambda c: ["eval", c["copy"], *FAST_EVAL, "--device", "bogus"],
                          "--device"),
    "eval-min-window-huge": (lambda c: ["eval", c["copy"], *FAST_EVAL, "--min-window-s",
                                        "1e308"], "--min-window-s"),
    "eval-idle-huge": (lambda c: ["eval", c["copy"], *FAST_EVAL, "--idle-s", "1e308"],
                       "--idle-s"),
    "eval-batch-huge": (lambda c: ["eval", c["copy"], *FAST_EVAL, "--batch-sizes",
                                   "100000000000"], "--batch-sizes"),
    "eval-temperature-zero": (lambda c: ["eval", c["copy"], *FAST_EVAL, "--temperature-k",
                                         "0"], "--temperature-k"),
    "eval-tracking-uri": (lambda c: ["eval", c["copy"], *FAST_EVAL[:-1], "--tracking-uri",
                                     "bogus://x"], "--tracking-uri"),
    # train: the meter, the parent, where checkpoints go and the recipe file itself
    "train-meter-rapl": pytest.param(
        lambda c: train_args(c, "--depth.meter", "rapl"), "depth.meter", marks=NO_RAPL),
    "train-init-from-missing": (lambda c: train_args(c, "--init_from", str(c["tmp"] / "no.ckpt")),
                                "init_from"),
    "train-out-dir-unwritable": (lambda c: train_args(c, "--train.out_dir",
                                                      str(c["afile"] / "out")), "out_dir"),
    "train-recipe-not-utf8": (lambda c: ["train", non_utf8_recipe(c)], "UTF-8"),
    "train-tracking-uri": (lambda c: train_args(c, "--tracking.enabled", "true",
                                                "--tracking.tracking_uri", "bogus://x"),
                           "tracking.tracking_uri"),
    # where output goes
    "card-output-unwritable": (lambda c: ["card", c["copy"], "--output",
                                          str(c["afile"] / "README.md")], "--output"),
    "card-output-exists": (lambda c: ["card", c["copy"], "--output", existing_output(c)],
                           "--force"),
    "report-out-unwritable": (lambda c: ["report", "--experiment", "errors", "--no-log",
                                         "--tracking-uri", c["uri"], "--out",
                                         str(c["afile"] / "report")], "--out"),
    # tracking stores MLflow has no kind of
    "provenance-tracking-uri": (lambda c: ["provenance", "runs:/abc", "--tracking-uri",
                                           "bogus://x"], "--tracking-uri"),
    "report-tracking-uri": (lambda c: ["report", "--tracking-uri", "bogus://x"],
                            "--tracking-uri"),
    "amortize-tracking-uri": (lambda c: ["amortize", "runs:/abc", "--served-tokens", "1e6",
                                         "--tracking-uri", "bogus://x"], "--tracking-uri"),
    # files depth wrote, edited or damaged
    "amortize-empty-eval-file": (lambda c: ["amortize", with_eval_file(c, "{}"),
                                            "--served-tokens", "1e6", "--no-log"],
                                 "joules_per_token"),
    "sync-done-line-not-an-id": (lambda c: ["sync", spool_with_done(c, "42"),
                                            "--tracking-uri", c["uri"]], ".done"),
    "verify-a-directory": (lambda c: ["verify", str(c["tmp"])], "directory"),
    # records: sealed (digest matches) but of the wrong shape
    "verify-wrong-type": (lambda c: ["verify", resealed(
        c, lambda r: r.update(train_joules="lots"))], "train_joules"),
    "provenance-wrong-type": (lambda c: ["provenance", resealed(
        c, lambda r: r.update(segments="none"))], "segments"),
    "provenance-devices-not-a-map": (lambda c: ["provenance", resealed(
        c, lambda r: r.update(devices=[1.0]))], "devices"),
    "eval-wrong-type": (lambda c: ["eval", resealed(c, lambda r: r.update(
        train_joules="lots")), *FAST_EVAL], "train_joules"),  # refused before measuring
    "verify-unknown-schema": (lambda c: ["verify", resealed(
        c, lambda r: r.update(schema="other/1"))], "schema"),
    "provenance-newer-schema-missing-field": (lambda c: ["provenance", resealed(
        c, lambda r: (r.update(schema="depth.provenance/2"), r.pop("optimizer_steps")))],
        "schema"),
    "provenance-missing-field": (lambda c: ["provenance", resealed(
        c, lambda r: r.pop("optimizer_steps"))], "optimizer_steps"),
    "verify-deep-lineage": (lambda c: ["verify", deep_lineage(c)], "lineage"),
    "provenance-deep-lineage": (lambda c: ["provenance", deep_lineage(c)], "lineage"),
}


@pytest.mark.parametrize(("argv_of", "needle"), list(CASES.values()), ids=list(CASES))
def test_bad_input_is_one_line_naming_the_field(ctx, capsys, argv_of, needle):
    argv = argv_of(ctx)
    capsys.readouterr()
    status = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert status != 0, captured.out
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    assert needle in lines[0], lines[0]


def test_card_output_is_kept_without_force_and_replaced_with_it(ctx, capsys):
    path = existing_output(ctx)
    assert main(["card", ctx["copy"], "--output", path]) == 2
    assert Path(path).read_text() == "my model card\n"  # nothing lost
    for flag in ("--force", "--overwrite"):
        Path(path).write_text("my model card\n")
        assert main(["card", ctx["copy"], "--output", path, flag]) == 0
        assert Path(path).read_text().startswith("---\n") and "train_joules" in Path(
            path).read_text()
    assert [p.name for p in Path(path).parent.glob(".*.tmp")] == []  # no temporary left


def test_the_deepest_lineage_read_is_read_by_every_command(ctx, capsys):
    """MAX_GENERATIONS is not just a number: a lineage that deep verifies, shows and makes
    a card; one more generation is refused in one line."""
    from depth.record.schema import MAX_GENERATIONS

    deepest = lineage(ctx, MAX_GENERATIONS)
    for argv in (["verify", deepest], ["provenance", deepest], ["provenance", "--json", deepest],
                 ["card", deepest]):
        assert main(argv) == 0, capsys.readouterr().err
    assert f"{MAX_GENERATIONS - 1:>2}  " in capsys.readouterr().out  # the oldest ancestor
    assert main(["verify", lineage(ctx, MAX_GENERATIONS + 1)]) == 2
    assert "lineage" in capsys.readouterr().err


def depth_process(*argv: str, **kwargs: Any) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.run([sys.executable, "-m", "depth.cli", *argv], text=True, env=env,
                          **{"capture_output": True, "timeout": 60, **kwargs})


def test_meters_refuses_a_reading_that_would_never_end():
    out = depth_process("meters", "--seconds", "1e308", "--gpu", "off", "--cpu", "estimate")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [out.stderr.strip()]
    assert "--seconds" in out.stderr and "Traceback" not in out.stderr


def test_a_closed_pipe_ends_the_command_quietly(ctx):
    """`depth provenance CKPT | head -0`: the reader is gone before anything is written."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        out = depth_process("provenance", "--json", ctx["copy"], stdout=write_end,
                            stderr=subprocess.PIPE, capture_output=False)
    finally:
        os.close(write_end)
    assert out.stderr == ""
    assert out.returncode == 1


def test_a_done_file_of_replayed_ids_still_syncs(ctx, capsys):
    """The check that refuses a damaged .done file leaves a good one alone."""
    spool = spool_with_done(ctx, json.dumps({"id": "not-this-one"}))
    assert main(["sync", spool, "--tracking-uri", ctx["uri"]]) == 0
    assert "1 events replayed" in capsys.readouterr().out
