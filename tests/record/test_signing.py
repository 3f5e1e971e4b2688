"""Signed records (HMAC with a key from the environment) and no secret written anywhere."""

from __future__ import annotations

import json
import warnings

import pytorch_lightning as pl
import torch
from mlflow import MlflowClient

from depth import DepthCallback
from depth.record.digest import record_sha256
from depth.record.provenance import Provenance
from depth.tracking.store import redact
from depth.record.verify import MISMATCH, OK, verify_checkpoint
from tests.doubles.meters import ClockMeter
from tests.support.lightning_models import TinyLM, loader, sqlite_mlflow_logger
from tests.support.mlflow_server import free_port

KEY = "key-0f1e2d3c4b5a"


def fit(tmp_path, logger=False, **callback):
    trainer = pl.Trainer(callbacks=[DepthCallback(ClockMeter(), **callback)], logger=logger,
                         max_steps=3, default_root_dir=tmp_path, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(TinyLM(), loader(n=40))
    return trainer.checkpoint_callback.best_model_path


def test_a_signed_record_verifies_only_with_its_key(tmp_path, monkeypatch):
    monkeypatch.setenv("DEPTH_SIGNING_KEY", KEY)
    monkeypatch.setenv("DEPTH_SIGNING_KEY_ID", "team-2026")
    path = fit(tmp_path, tracking=False)
    checkpoint = torch.load(path, weights_only=True)
    record = checkpoint["depth"]
    assert record["signature"]["alg"] == "HMAC-SHA256"
    assert record["signature"]["key_id"] == "team-2026"
    verdict = verify_checkpoint(path)
    assert verdict.status == OK and "signature valid" in verdict.reason
    monkeypatch.setenv("DEPTH_SIGNING_KEY", "another-key")
    assert verify_checkpoint(path).status == MISMATCH
    monkeypatch.delenv("DEPTH_SIGNING_KEY")
    verdict = verify_checkpoint(path)
    assert verdict.status == OK and "DEPTH_SIGNING_KEY is not set" in verdict.reason

    monkeypatch.setenv("DEPTH_SIGNING_KEY", KEY)
    forged = dict(record, train_joules=1.0)  # edited, digest recomputed: tamper evidence
    forged["record_sha256"] = record_sha256(forged)  # passes, the signature does not
    torch.save({**checkpoint, "depth": forged}, tmp_path / "forged.ckpt")
    verdict = verify_checkpoint(tmp_path / "forged.ckpt")
    assert verdict.status == MISMATCH and "signature does not match" in verdict.reason
    stripped = dict(forged, signature=None)
    torch.save({**checkpoint, "depth": stripped}, tmp_path / "stripped.ckpt")
    verdict = verify_checkpoint(tmp_path / "stripped.ckpt")
    assert verdict.status == MISMATCH and "not signed" in verdict.reason


def test_unsigned_records_keep_their_digest():
    record = Provenance(train_joules=1.0, optimizer_steps=1, train_tokens=None, devices={},
                        method="rapl", segments=[], wasted_joules=0.0, weights_sha256=None,
                        created="2026-11-22T00:00:00+00:00")
    plain, signed = record.sealed(), record.sealed(KEY.encode())
    assert plain["record_sha256"] == signed["record_sha256"]  # the signature is outside it
    assert plain["signature"] is None and signed["signature"]["value"]


def test_redact_hides_credentials_only():
    assert redact("https://alice:pw@mlflow.example.com:5000/x") == \
        "https://***@mlflow.example.com:5000/x"
    assert redact("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert redact("sqlite:///mlruns/mlflow.db") == "sqlite:///mlruns/mlflow.db"


SECRETS = {"DEPTH_SIGNING_KEY": "s3cret-signing-4417", "MLFLOW_TRACKING_PASSWORD": "s3cret-pw-9931",
           "MLFLOW_TRACKING_TOKEN": "s3cret-token-2231", "AWS_SECRET_ACCESS_KEY": "s3cret-aws-5521"}


def assert_no_secret(text: str, where: str, extra: tuple[str, ...] = ()) -> None:
    for secret in (*SECRETS.values(), *extra):
        assert secret not in text, f"{secret} leaked into {where}"


def test_no_secret_reaches_records_tags_artifacts_spools_or_logs(tmp_path, monkeypatch, capfd):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    # 1. a tracking server whose URI carries credentials, and is down: warnings and spool
    dead = f"http://alice:s3cret-uri-7781@127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = fit(tmp_path / "down")
    texts = {"warnings": "\n".join(str(w.message) for w in caught),
             "checkpoint": open(path, "rb").read().decode("latin-1")}
    assert "***@127.0.0.1" in texts["warnings"]
    for spooled in (tmp_path / "down" / "depth-spool").glob("*"):
        texts[str(spooled)] = spooled.read_text()
    for sidecar in (tmp_path / "down").rglob("depth-ledger*.json"):
        texts[str(sidecar)] = sidecar.read_text()
    # 2. a working store: run tags, params, metrics names, the provenance artifact
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/ok.db")
    uri, logger = sqlite_mlflow_logger(tmp_path / "ok", "secrets")
    fit(tmp_path / "ok", logger=logger, mlflow_writer="thread")
    client = MlflowClient(uri)
    run = client.get_run(logger.run_id)
    texts["run"] = json.dumps({"tags": run.data.tags, "params": run.data.params,
                               "metrics": list(run.data.metrics)})
    texts["artifact"] = open(client.download_artifacts(
        logger.run_id, "depth/provenance.json", str(tmp_path))).read()
    out, err = capfd.readouterr()
    texts["stdout+stderr"] = out + err
    for where, text in texts.items():
        assert_no_secret(text, where, extra=("s3cret-uri-7781",))
    assert json.loads(texts["artifact"])["signature"]["value"]  # signed, key not written
