"""The energy of the search: real tiny fits in one experiment of a real SQLite store (one
kept, one discarded, one failed by an exception, one resumed in another run), `depth report`'s
search figures against the runs' own joules, and `depth attribute` shown in the card, the
provenance and the report, replaced (not added) when attributed again."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
from mlflow import MlflowClient
from pytorch_lightning.callbacks import ModelCheckpoint

from depth import DepthCallback
from depth.cli import main
from depth.serving.search_attach import search_file
from depth.tracking.publish import register_model
from tests.doubles.meters import ClockMeter
from tests.support.lightning_models import TinyLM, loader, sqlite_mlflow_logger

EXPERIMENT = "sweep"


class FailingLM(TinyLM):
    def training_step(self, batch, batch_idx):
        if batch_idx == 4:
            raise RuntimeError("diverged")
        return super().training_step(batch, batch_idx)


def fit(root: Path, name: str, model: TinyLM, ckpt_path: str | None = None) -> tuple[str, str]:
    """One fit in its own run of the experiment: (run id, last checkpoint path or '')."""
    _, logger = sqlite_mlflow_logger(root, EXPERIMENT)
    logger._run_name = name
    checkpoints = ModelCheckpoint(dirpath=root / name, save_last=False)
    trainer = pl.Trainer(
        callbacks=[DepthCallback(ClockMeter({"gpu:0": 300.0}), flush_interval_s=0.01,
                                 mlflow_writer="thread", sidecar=False), checkpoints],
        logger=logger, default_root_dir=root, max_epochs=2 if ckpt_path else 1,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        accelerator="cpu", devices=1)
    trainer.fit(model, loader(n=40), ckpt_path=ckpt_path)
    return logger.run_id, checkpoints.best_model_path


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    uri = f"sqlite:///{root}/mlflow.db"
    runs = {}
    runs["kept"], kept = fit(root, "kept", TinyLM(step_sleep_s=0.002))
    runs["discarded"], discarded = fit(root, "discarded", TinyLM(step_sleep_s=0.002))
    with pytest.raises(RuntimeError, match="diverged"):
        fit(root, "failed", FailingLM(step_sleep_s=0.002))
    runs["failed"] = MlflowClient(uri).search_runs(
        [MlflowClient(uri).get_experiment_by_name(EXPERIMENT).experiment_id],
        filter_string="attributes.status = 'FAILED'")[0].info.run_id
    # the discarded model resumed in a run of its own: only its second epoch is its energy
    runs["resumed"], _ = fit(root, "resumed", TinyLM(step_sleep_s=0.002), ckpt_path=discarded)
    client = MlflowClient(uri)
    kept_model = client.search_logged_models(
        [client.get_experiment_by_name(EXPERIMENT).experiment_id],
        filter_string=f"source_run_id = '{runs['kept']}'")[0].model_id
    return dict(uri=uri, root=root, runs=runs, kept=kept, discarded=discarded,
                kept_model=kept_model)


def own_joules(uri: str, run_id: str, carried: float = 0.0) -> float:
    history = MlflowClient(uri).get_metric_history(run_id, "energy/joules")
    return max(m.value for m in history) - carried


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out = capsys.readouterr()
    return status, out.out, out.err


def record_of(path: str) -> dict:
    import torch

    return torch.load(path, weights_only=True)["depth"]


def test_report_counts_every_run_and_sets_them_against_the_kept_model(sweep, capsys):
    uri, runs = sweep["uri"], sweep["runs"]
    register_model(sweep["kept_model"], "tiny", MlflowClient(uri))
    carried = record_of(sweep["discarded"])["train_joules"]  # the resumed run began there
    expected = {name: own_joules(uri, run_id, carried if name == "resumed" else 0.0)
                for name, run_id in runs.items()}
    assert all(j > 0 for j in expected.values()) and expected["failed"] > 0
    status, out, err = cli(capsys, "report", "--experiment", EXPERIMENT, "--tracking-uri",
                           uri, "--out", str(sweep["root"] / "report"), "--no-log")
    assert status == 0, err
    search = json.loads((sweep["root"] / "report" / "search.json").read_text())
    assert search["runs"] == 4 and search["failed_runs"] == 1
    by_run = search["run_joules"]
    for name, run_id in runs.items():
        assert by_run[run_id] == pytest.approx(expected[name], rel=1e-6), name
    total = sum(expected.values())
    assert search["search_joules"] == pytest.approx(total, rel=1e-6)
    kept_j = float(MlflowClient(uri).get_logged_model(sweep["kept_model"])
                   .tags["depth.train_joules"])
    assert search["kept_models"] == [sweep["kept_model"]]
    assert search["overhead"] == pytest.approx(total / kept_j, rel=1e-5)
    # three other runs' energy beside the kept one's (their sizes follow each fit's wall time
    # at a constant 300 W, so only the exact sum above is asserted, not a ratio)
    assert search["overhead"] > 1.0
    assert f"search overhead: {total / kept_j:.3g}x" in out
    assert "(1 failed)" in out


def test_keep_names_more_kept_models_and_rejects_strangers(sweep, capsys):
    uri = sweep["uri"]
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    other = client.search_logged_models(
        [experiment], filter_string=f"source_run_id = '{sweep['runs']['discarded']}'")[0]
    status, _, err = cli(capsys, "report", "--experiment", EXPERIMENT, "--tracking-uri", uri,
                         "--out", str(sweep["root"] / "r2"), "--no-log", "--json",
                         "--keep", other.model_id)
    assert status == 0, err
    search = json.loads((sweep["root"] / "r2" / "search.json").read_text())
    assert other.model_id in search["kept_models"]
    status, _, err = cli(capsys, "report", "--experiment", EXPERIMENT, "--tracking-uri", uri,
                         "--out", str(sweep["root"] / "r3"), "--no-log", "--keep", "m-nope")
    assert status == 2 and len(err.strip().splitlines()) == 1 and "--keep m-nope" in err
    status, _, err = cli(capsys, "report", "--experiment", EXPERIMENT, "--tracking-uri", uri,
                         "--keep", "kept.ckpt")
    assert status == 2 and len(err.strip().splitlines()) == 1 and "--keep" in err


def test_attribute_keeps_search_joules_apart_and_shows_it_everywhere(sweep, capsys):
    uri, ckpt = sweep["uri"], sweep["kept"]
    before = hashlib.sha256(Path(ckpt).read_bytes()).hexdigest()
    record = record_of(ckpt)
    status, out, err = cli(capsys, "attribute", "--experiment", EXPERIMENT, "--to", ckpt,
                           "--tracking-uri", uri, "--json")
    assert status == 0, err
    first = json.loads(out)
    carried = record_of(sweep["discarded"])["train_joules"]
    total = sum(own_joules(uri, r, carried if n == "resumed" else 0.0)
                for n, r in sweep["runs"].items())
    assert first["search_joules"] == pytest.approx(total, rel=1e-6)
    assert first["own_joules"] == pytest.approx(record["train_joules"])
    assert first["beyond_joules"] == pytest.approx(total - record["train_joules"], rel=1e-6)
    entry = next(iter(first["experiments"].values()))
    assert sorted(entry["run_ids"]) == sorted(sweep["runs"].values())
    assert entry["failed_runs"] == 1 and entry["methods"] and entry["attributed_at"]
    # the sealed record is untouched: the checkpoint's bytes and digest are what they were
    assert hashlib.sha256(Path(ckpt).read_bytes()).hexdigest() == before
    assert record_of(ckpt)["train_joules"] == record["train_joules"]
    assert json.loads(search_file(ckpt).read_text())["record_sha256"] == record["record_sha256"]
    model = MlflowClient(uri).get_logged_model(first["logged_model"])
    assert model.model_id == sweep["kept_model"]
    assert float(model.tags["depth.search_joules"]) == pytest.approx(total, rel=1e-5)
    assert float(model.tags["depth.train_joules"]) == pytest.approx(record["train_joules"])
    # the LoggedModel's page (its description) says it, apart from the training energy
    assert "Search energy" in model.tags["mlflow.note.content"]
    assert "Beyond this model's own training" in model.tags["mlflow.note.content"]
    # card, provenance (the file and the LoggedModel) and the report show it
    status, card, err = cli(capsys, "card", ckpt)
    assert status == 0, err
    import yaml

    meta = yaml.safe_load(card.strip().strip("-"))["depth"]
    assert meta["search_joules"] == pytest.approx(total, rel=1e-6)
    assert meta["train_joules"] == pytest.approx(record["train_joules"])
    for source in (ckpt, sweep["kept_model"]):
        status, text, err = cli(capsys, "provenance", source, "--tracking-uri", uri)
        assert status == 0, err
        assert f"Search energy: {total:,.1f} J" in text and "over 4 runs" in text
    status, out, err = cli(capsys, "report", "--experiment", EXPERIMENT, "--tracking-uri",
                           uri, "--out", str(sweep["root"] / "r4"), "--no-log", "--json")
    row = next(r for r in json.loads(out) if r["model_id"] == sweep["kept_model"])
    assert row["search_joules"] == pytest.approx(total, rel=1e-5)
    # attributed again: replaced, not added
    status, out, err = cli(capsys, "attribute", "--experiment", EXPERIMENT, "--to",
                           sweep["kept_model"], "--tracking-uri", uri, "--json")
    assert status == 0, err
    second = json.loads(out)
    assert len(second["experiments"]) == 1
    assert second["search_joules"] == pytest.approx(total, rel=1e-6)
    model = MlflowClient(uri).get_logged_model(sweep["kept_model"])
    assert float(model.tags["depth.search_joules"]) == pytest.approx(total, rel=1e-5)
    status, out, err = cli(capsys, "attribute", "--experiment", EXPERIMENT, "--to", ckpt,
                           "--tracking-uri", uri, "--json")
    assert json.loads(out)["search_joules"] == pytest.approx(total, rel=1e-6)
    assert len(json.loads(search_file(ckpt).read_text())["experiments"]) == 1


@pytest.mark.parametrize("argv, names", [
    (["--experiment", "nope", "--to", "CKPT"], "no experiment 'nope'"),
    (["--experiment", EXPERIMENT, "--to", "missing.ckpt"], "missing.ckpt"),
    (["--experiment", EXPERIMENT, "--to", "m-doesnotexist"], "m-doesnotexist"),
    (["--experiment", "   ", "--to", "CKPT"], "--experiment"),
    (["--to", "CKPT"], "experiment"),
])
def test_bad_attribute_input_is_one_line(sweep, capsys, argv, names):
    argv = [sweep["kept"] if a == "CKPT" else a for a in argv]
    try:
        status = main(["attribute", *argv, "--tracking-uri", sweep["uri"]])
    except SystemExit as exit_:  # the parser's own one-line error
        status = exit_.code
    err = capsys.readouterr().err
    assert status == 2
    assert len(err.strip().splitlines()) == 1 and names in err and "Traceback" not in err


def test_an_experiment_without_depth_runs_is_one_line(sweep, capsys):
    uri = sweep["uri"]
    MlflowClient(uri).create_experiment("empty")
    status, _, err = cli(capsys, "attribute", "--experiment", "empty", "--to", sweep["kept"],
                         "--tracking-uri", uri)
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert "no runs with depth energy" in err
