"""MLflow pages that explain themselves (issue 15, points 1 and 2): a checkpoint's
LoggedModel carries depth parameters and a markdown summary as its description, its run
and its registered versions the same; `depth eval` and `depth amortize` write it again
with their figures; a description someone else wrote is kept; `depth register`. A real
tiny-recipe fit on its own SQLite store, real `depth eval`."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from mlflow import MlflowClient
from pytorch_lightning.callbacks import ModelCheckpoint

from depth import DepthCallback
from depth.cli import main
from depth.record.summary import GPT3_J_PER_PARAMETER
from depth.tracking.pages import NOTE
from depth.tracking.sources import find_logged_model
from tests.doubles.meters import ClockMeter
from tests.support.lightning_models import TinyLM, loader, sqlite_mlflow_logger
from tests.support.tiny_recipe import train_tiny_recipe

PARAMS = ("method", "measured", "optimizer_steps", "train_tokens", "devices", "hardware",
          "sync", "parent", "uncertainty")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    uri, ckpt = train_tiny_recipe(tmp_path_factory.mktemp("pages"), "pages")
    record = torch.load(ckpt, weights_only=True)["depth"]
    return uri, ckpt, record, find_logged_model(uri, record["record_sha256"])


def cli(capsys, *argv):
    status = main([str(a) for a in argv])
    out = capsys.readouterr()
    return status, out.out, out.err


def test_a_logged_model_page_explains_its_energy(trained):
    uri, _, record, model_id = trained
    client = MlflowClient(uri)
    model = client.get_logged_model(model_id)
    assert {f"depth.{p}" for p in PARAMS} <= set(model.params)
    assert model.params["depth.method"] == record["method"] == "estimate"
    assert model.params["depth.measured"].startswith("false (ESTIMATED")
    assert model.params["depth.optimizer_steps"] == str(record["optimizer_steps"])
    assert model.params["depth.parent"] == "none (trained from scratch)"
    assert model.params["depth.uncertainty"].startswith("±50%")
    note = model.tags[NOTE]
    assert f"{record['train_joules'] / 3.6e6:.3g} kWh" in note
    per_param = record["train_joules"] / record["parameters"]
    assert f"{per_param:.3g} J/param" in note
    assert f"GPT-3's ~{GPT3_J_PER_PARAMETER:.1f} J/param" in note and "Patterson" in note
    assert "`estimate` (ESTIMATED: no sensor)" in note and "±50%" in note
    assert "1 (1 fit); wasted work 0 J" in note and "none (trained from scratch)" in note
    assert "not measured yet" in note
    # every metric on the page says its unit in its name
    assert {m.key for m in model.metrics} == {"depth.train_joules", "depth.train_kwh"}
    run = client.get_run(model.source_run_id)
    assert run.data.tags[NOTE] == note  # the run depth opened says the same


def test_eval_amortize_and_register_keep_the_pages_current(trained, capsys):
    uri, ckpt, record, model_id = trained
    client = MlflowClient(uri)
    status, out, err = cli(capsys, "register", ckpt, "pages-gpt", "--tracking-uri", uri)
    assert status == 0, err
    assert f"pages-gpt version 1 <- LoggedModel {model_id}" in out
    assert "#/models/pages-gpt/versions/1" in out
    version = client.get_model_version("pages-gpt", "1")
    assert version.description == client.get_logged_model(model_id).tags[NOTE]
    assert version.tags["depth.model_id"] == model_id
    assert version.tags["depth.method"] == "estimate"

    status, out, err = cli(capsys, "eval", ckpt, "--batch-sizes", "1,2", "--repeats", 1,
                           "--min-window-s", 0.05, "--idle-s", 0, "--loss-batches", 0,
                           "--prompt-tokens", 4, "--new-tokens", 4, "--remeasures", 0,
                           "--json", "--tracking-uri", uri)
    assert status == 0, err
    import json

    result = json.loads(out)
    note = client.get_logged_model(model_id).tags[NOTE]
    assert f"{result['tokens_per_wh']:,.0f} tokens/Wh" in note
    assert f"{record['train_joules'] / result['joules_per_token']:,.0f} served tokens" in note
    assert "not measured yet" not in note
    assert client.get_model_version("pages-gpt", "1").description == note
    assert client.get_run(client.get_logged_model(model_id).source_run_id).data.tags[NOTE] \
        == note

    status, _, err = cli(capsys, "amortize", ckpt, "--served-tokens", 1000,
                         "--joules-per-token", 0.5, "--tracking-uri", uri)
    assert status == 0, err
    note = client.get_logged_model(model_id).tags[NOTE]
    assert "**Amortized** (`depth amortize`)" in note and "1,000 served tokens" in note
    assert f"{result['tokens_per_wh']:,.0f} tokens/Wh" in note  # still there

    # someone writes their own descriptions: depth leaves them alone from then on
    client.set_logged_model_tags(model_id, {NOTE: "my notes"})
    client.update_model_version("pages-gpt", "1", description="approved by QA")
    status, _, err = cli(capsys, "amortize", ckpt, "--served-tokens", 2000,
                         "--joules-per-token", 0.5, "--tracking-uri", uri)
    assert status == 0, err
    assert client.get_logged_model(model_id).tags[NOTE] == "my notes"
    assert client.get_model_version("pages-gpt", "1").description == "approved by QA"


def test_register_takes_every_source_form(trained, capsys):
    uri, _, _, model_id = trained
    client = MlflowClient(uri)
    run_id = client.get_logged_model(model_id).source_run_id
    for source in (model_id, f"models:/{model_id}", f"runs:/{run_id}"):
        status, out, err = cli(capsys, "register", source, "forms", "--tracking-uri", uri)
        assert status == 0, err
        assert f"<- LoggedModel {model_id}" in out
    status, out, err = cli(capsys, "register", "models:/forms/1", "forms-copy",
                           "--tracking-uri", uri)
    assert status == 0 and f"<- LoggedModel {model_id}" in out, err


@pytest.mark.parametrize("source, name, says", [
    ("m-0000", "x", "m-0000: Logged model with ID 'm-0000' not found"),
    ("MODEL", "bad/name", "NAME 'bad/name': Invalid model name"),
    ("MODEL", " ", "NAME is empty"),
    ("missing.ckpt", "x", "missing.ckpt"),
    ("models:/nosuch/1", "x", "models:/nosuch/1"),
])
def test_register_bad_input_is_one_line(trained, capsys, source, name, says):
    uri, _, _, model_id = trained
    status, out, err = cli(capsys, "register", source.replace("MODEL", model_id), name,
                           "--tracking-uri", uri)
    assert status == 2 and out == ""
    assert says in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_register_a_checkpoint_the_store_never_saw_is_one_line(trained, capsys, tmp_path):
    _, ckpt, _, _ = trained
    other = f"sqlite:///{tmp_path}/empty.db"
    # a store file that does not exist is refused, not created
    status, _, err = cli(capsys, "register", ckpt, "x", "--tracking-uri", other)
    assert status == 2 and "no MLflow store at" in err and "does not exist" in err
    assert not (tmp_path / "empty.db").exists()
    MlflowClient(other).search_experiments()  # an existing store that never saw this record
    status, _, err = cli(capsys, "register", ckpt, "x", "--tracking-uri", other)
    assert status == 2 and "its record was never published to" in err
    # (MLflow itself logs that it created the empty store's tables: its lines, not ours)
    assert len([x for x in err.splitlines() if x.startswith("depth")]) == 1
    assert "Traceback" not in err


def test_a_users_own_run_description_is_kept(tmp_path):
    uri, logger = sqlite_mlflow_logger(tmp_path, "own-note")
    logger.experiment.set_tag(logger.run_id, NOTE, "my experiment, my words")
    trainer = pl.Trainer(
        callbacks=[DepthCallback(ClockMeter()), ModelCheckpoint(
            dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1)],
        logger=logger, max_steps=4, enable_progress_bar=False, enable_model_summary=False,
        accelerator="cpu", devices=1, default_root_dir=tmp_path)
    trainer.fit(TinyLM(), loader(n=40))
    client = MlflowClient(uri)
    assert client.get_run(logger.run_id).data.tags[NOTE] == "my experiment, my words"
    models = client.search_logged_models([client.get_run(logger.run_id).info.experiment_id])
    assert len(models) == 2 and all("kWh" in m.tags[NOTE] for m in models)
    # a third-party meter: no bound known, said so
    assert all(m.params["depth.uncertainty"].startswith("no known bound") for m in models)
