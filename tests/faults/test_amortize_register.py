"""`depth amortize` run twice, a supplied J/token, a fast serving rate, and registering a
LoggedModel from a store that is not MLflow's global one: a real trained checkpoint and a
real SQLite MLflow store."""

from __future__ import annotations

import json

import pytest
import torch
from mlflow import MlflowClient

from depth.cli import main
from depth.serving.amortize import duration_text
from depth.tracking.publish import register_model
from tests.support.tiny_recipe import train_tiny_recipe


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_tiny_recipe(tmp_path_factory.mktemp("amortize"), "amortize")


def amortize(capsys, *argv):
    status = main(["amortize", *map(str, argv)])
    out = capsys.readouterr()
    assert status == 0, out.err
    return out.out


def test_amortize_twice_keeps_one_current_value_per_field(trained, capsys):
    uri, ckpt = trained
    first = json.loads(amortize(capsys, ckpt, "--tokens-per-day", 1000, "--days", 30,
                                "--joules-per-token", 0.5, "--json", "--tracking-uri", uri))
    second = json.loads(amortize(capsys, ckpt, "--served-tokens", 5000,
                                 "--joules-per-token", 0.25, "--json", "--tracking-uri", uri))
    assert first["logged_model"] == second["logged_model"]
    model = MlflowClient(uri).get_logged_model(second["logged_model"])
    amortize_tags = {k: v for k, v in model.tags.items() if k.startswith("depth.amortize.")}
    assert amortize_tags["depth.amortize.served_tokens"] == "5000"
    assert float(amortize_tags["depth.amortize.inference_j_per_token"]) == 0.25
    assert float(amortize_tags["depth.amortize.break_even_tokens"]) == pytest.approx(
        second["break_even_tokens"], rel=1e-5)
    # the first run's horizon is gone, not left beside the second's
    assert amortize_tags["depth.amortize.tokens_per_day"] == "none"
    assert amortize_tags["depth.amortize.break_even_days"] == "none"
    # no amortize value piles up as LoggedModel metrics (each run would append one)
    assert not [m for m in model.metrics or [] if m.key.startswith("amortize/")]


def test_a_supplied_joules_per_token_is_marked_supplied_not_measured(trained, capsys):
    uri, ckpt = trained
    result = json.loads(amortize(capsys, ckpt, "--served-tokens", 1000, "--joules-per-token",
                                 0.5, "--json", "--tracking-uri", uri))
    assert result["inference_source"] == "supplied" and result["inference_measured"] is False
    tags = MlflowClient(uri).get_logged_model(result["logged_model"]).tags
    assert tags["depth.amortize.inference_source"] == "supplied"
    text = amortize(capsys, ckpt, "--served-tokens", 1000, "--joules-per-token", 0.5,
                    "--no-log")
    assert "SUPPLIED with --joules-per-token, not measured" in text


def test_break_even_at_a_fast_rate_prints_its_real_duration(trained, capsys):
    uri, ckpt = trained
    depth_j = torch.load(ckpt, weights_only=True)["depth"]["depth_joules"]
    rate = 1e9  # tokens per day
    text = amortize(capsys, ckpt, "--served-tokens", 1000, "--tokens-per-day", rate,
                    "--joules-per-token", 1e-6, "--no-log")
    seconds = depth_j / 1e-6 / rate * 86400
    line = next(x for x in text.splitlines() if "break-even" in x)
    assert "0.0 days" not in line
    assert f"= {duration_text(seconds / 86400)} at the given rate" in line
    assert duration_text(89_917 / rate) == "7.77 seconds"  # the reported case


def test_duration_text_picks_the_unit():
    assert duration_text(0.5 / 86400) == "0.5 seconds"
    assert duration_text(90 / 86400) == "1.5 minutes"
    assert duration_text(3.2 / 24) == "3.2 hours"
    assert duration_text(1.0) == "1 day"
    assert duration_text(45.2) == "45.2 days"
    assert duration_text(1234 * 365.25) == "1,234 years"


def test_amortize_reads_the_newest_eval_of_a_logged_model(trained):
    from depth.serving.evaluation import _log_model_metrics, inference_j_per_token
    from depth.tracking.sources import find_logged_model

    uri, ckpt = trained
    record = torch.load(ckpt, weights_only=True)["depth"]
    model_id = find_logged_model(uri, record["record_sha256"])
    for value in (9.0, 2.0):  # two evals, the second current
        _log_model_metrics(uri, model_id, [("inference/joules_per_token", value, 0)])
    value, where, measured = inference_j_per_token(model_id, uri)
    assert value == 2.0 and model_id in where and measured is False


def test_register_model_links_the_version_to_its_logged_model(trained):
    uri, ckpt = trained
    client = MlflowClient(uri)
    record = torch.load(ckpt, weights_only=True)["depth"]
    from depth.tracking.sources import find_logged_model

    model_id = find_logged_model(uri, record["record_sha256"])
    version = register_model(model_id, "linked", client=client)
    stored = client.get_model_version("linked", version.version)
    assert stored.source == f"models:/{model_id}"
    assert stored.run_id == client.get_logged_model(model_id).source_run_id
    assert stored.tags["depth.model_id"] == model_id
    assert stored.tags["depth.record_sha256"] == record["record_sha256"]
    listed = json.loads(client.get_logged_model(model_id).tags["mlflow.modelVersions"])
    assert listed == [{"name": "linked", "version": int(version.version)}]
    again = register_model(f"models:/{model_id}", "linked", client=client)
    listed = json.loads(client.get_logged_model(model_id).tags["mlflow.modelVersions"])
    assert [v["version"] for v in listed] == [int(version.version), int(again.version)]
