"""A resume trusts only the state its sealed record was made from (issue 13, point 7).

Before: dividing the callback state's joules by 1,000 in a signed checkpoint and resuming
produced a new, validly signed record of the smaller figure.
"""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from depth import DepthCallback
from depth.record.binding import ResumeRefused
from depth.record.digest import record_sha256
from depth.record.verify import MISMATCH, OK, verify_checkpoint
from tests.doubles.meters import ClockMeter
from tests.support.lightning_models import TinyLM, loader

KEY = "key-5a4b3c2d1e0f"
QUIET = dict(enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
             accelerator="cpu", devices=1, logger=False)


def train(tmp_path, steps=4, ckpt_path=None, callback=None):
    callback = callback or DepthCallback(ClockMeter({"gpu:0": 100.0}), tracking=False)
    trainer = pl.Trainer(callbacks=[callback], default_root_dir=tmp_path, max_steps=steps,
                         **QUIET)
    trainer.fit(TinyLM(step_sleep_s=0.005), loader(n=40), ckpt_path=ckpt_path)
    return trainer, callback


def shrink(state):
    """The attack: every joule in the resumable state divided by 1,000."""
    state["train_joules"] /= 1000
    state["devices"] = {d: j / 1000 for d, j in state["devices"].items()}
    for segment in state["segments"]:
        segment["joules"] /= 1000
        segment["devices"] = {d: j / 1000 for d, j in segment["devices"].items()}


@pytest.fixture()
def signed_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("DEPTH_SIGNING_KEY", KEY)
    trainer, _ = train(tmp_path / "first")
    return trainer.checkpoint_callback.best_model_path


def test_an_edited_state_is_refused_at_resume_and_by_verify(tmp_path, signed_checkpoint):
    checkpoint = torch.load(signed_checkpoint, weights_only=True)
    shrink(checkpoint["callbacks"]["DepthCallback"])
    torch.save(checkpoint, tmp_path / "edited.ckpt")
    verdict = verify_checkpoint(tmp_path / "edited.ckpt")
    assert verdict.status == MISMATCH and "train_joules" in verdict.reason
    with pytest.raises(ResumeRefused) as refused:
        train(tmp_path / "resumed", steps=6, ckpt_path=tmp_path / "edited.ckpt")
    message = str(refused.value)
    assert "\n" not in message and "devices, train_joules" in message


def test_a_state_and_record_edited_together_fail_on_the_signature(tmp_path, signed_checkpoint):
    checkpoint = torch.load(signed_checkpoint, weights_only=True)
    state, record = checkpoint["callbacks"]["DepthCallback"], checkpoint["depth"]
    shrink(state)
    for key in ("train_joules", "devices", "segments"):
        record[key] = state[key]
    record["record_sha256"] = record_sha256(record)  # consistent: only the key is missing
    torch.save(checkpoint, tmp_path / "forged.ckpt")
    with pytest.raises(ResumeRefused, match="signature does not hold"):
        train(tmp_path / "resumed", steps=6, ckpt_path=tmp_path / "forged.ckpt")


def test_an_untouched_signed_checkpoint_resumes_and_verifies(tmp_path, signed_checkpoint):
    assert verify_checkpoint(signed_checkpoint).status == OK
    trainer, callback = train(tmp_path / "resumed", steps=6, ckpt_path=signed_checkpoint)
    trainer.save_checkpoint(tmp_path / "after.ckpt")
    record = torch.load(tmp_path / "after.ckpt", weights_only=True)["depth"]
    first = torch.load(signed_checkpoint, weights_only=True)["depth"]
    assert record["train_joules"] > first["train_joules"]
    assert verify_checkpoint(tmp_path / "after.ckpt").status == OK


def test_resuming_an_unsigned_record_with_a_key_is_refused_unless_allowed_then_flagged(
        tmp_path, monkeypatch):
    """A stripped signature looks like a record saved without the key: with a key set, an
    unsigned history is not continued silently (a new user laundered a forged, unsigned
    history into a validly signed record this way)."""
    trainer, _ = train(tmp_path / "first")  # no key: unsigned
    monkeypatch.setenv("DEPTH_SIGNING_KEY", KEY)
    first = trainer.checkpoint_callback.best_model_path
    with pytest.raises(ResumeRefused, match="DEPTH_ALLOW_UNSIGNED_RESUME=1"):
        train(tmp_path / "refused", steps=6, ckpt_path=first)
    monkeypatch.setenv("DEPTH_ALLOW_UNSIGNED_RESUME", "1")
    resumed, _ = train(tmp_path / "resumed", steps=6, ckpt_path=first)
    resumed.save_checkpoint(tmp_path / "after.ckpt")
    record = torch.load(tmp_path / "after.ckpt", weights_only=True)["depth"]
    assert record["signature"]["value"]
    assert any("not covered by a signature up to step 4" in f for f in record["flags"])
    verdict = verify_checkpoint(tmp_path / "after.ckpt")
    assert verdict.status == OK and "signature valid" in verdict.reason
    assert "but not covered by a signature up to step 4" in verdict.reason


def test_a_history_erased_from_a_checkpoint_is_flagged_not_forgotten(tmp_path, monkeypatch):
    """Deleting the record and emptying the state left a signed record of the later steps
    only, with no trace of the earlier ones."""
    monkeypatch.setenv("DEPTH_SIGNING_KEY", KEY)
    trainer, _ = train(tmp_path / "first")
    checkpoint = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=True)
    del checkpoint["depth"]
    checkpoint["callbacks"]["DepthCallback"].update(segments=[], devices={}, train_joules=0.0)
    torch.save(checkpoint, tmp_path / "erased.ckpt")
    resumed, _ = train(tmp_path / "resumed", steps=6, ckpt_path=tmp_path / "erased.ckpt")
    resumed.save_checkpoint(tmp_path / "after.ckpt")
    record = torch.load(tmp_path / "after.ckpt", weights_only=True)["depth"]
    flags = [*record["flags"], *(f for s in record["segments"] for f in s["flags"])]
    assert any("no energy history before step 4" in f for f in flags)
    verdict = verify_checkpoint(tmp_path / "after.ckpt")
    assert verdict.status == OK and "but no energy history before step 4" in verdict.reason


def test_without_a_key_a_made_up_signature_is_not_checked_never_signed(tmp_path):
    trainer, _ = train(tmp_path / "first")
    path = trainer.checkpoint_callback.best_model_path
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["depth"]["signature"] = {"alg": "HMAC-SHA256", "key_id": "ceo", "value": "00"}
    torch.save(checkpoint, tmp_path / "claimed.ckpt")
    verdict = verify_checkpoint(tmp_path / "claimed.ckpt")
    assert verdict.status == OK and "signature not checked" in verdict.reason
    assert "signed" not in verdict.reason.replace("signature", "")
