"""Corrupted, truncated and tampered checkpoints, records and spools (property-based):
always a verdict or a one-line error, never a traceback."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from depth import DepthCallback
from depth.cli import main
from depth.record.provenance import Provenance
from depth.tracking.spool import SpoolError, sync_spool
from depth.record.verify import verify_checkpoint
from tests.doubles.meters import ClockMeter
from tests.support.lightning_models import TinyLM, loader

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> bytes:
    root = tmp_path_factory.mktemp("fuzz")
    trainer = pl.Trainer(callbacks=[DepthCallback(ClockMeter(), tracking=False)], logger=False,
                         max_steps=2, default_root_dir=root, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(TinyLM(), loader(n=16))
    return open(trainer.checkpoint_callback.best_model_path, "rb").read()


@SETTINGS
@given(data=st.data())
def test_damaged_checkpoints_get_a_verdict_never_a_traceback(original, tmp_path, data):
    blob = bytearray(original)
    kind = data.draw(st.sampled_from(["truncate", "flip", "splice"]))
    at = data.draw(st.integers(0, len(blob) - 1))
    if kind == "truncate":
        blob = blob[:at]
    elif kind == "flip":
        blob[at] ^= data.draw(st.integers(1, 255))
    else:
        blob[at:at] = data.draw(st.binary(min_size=1, max_size=64))
    path = tmp_path / "damaged.ckpt"
    path.write_bytes(bytes(blob))
    verdict = verify_checkpoint(path)
    assert verdict.status in (0, 1, 2)
    assert verdict.reason and "\n" not in verdict.reason and "Traceback" not in verdict.reason
    if bytes(blob) != original and verdict.status == 0:
        # a change that passes must have left weights and record intact (e.g. zip padding)
        assert "weights and record match" in verdict.reason


@SETTINGS
@given(blob=st.binary(max_size=200))
def test_the_cli_answers_garbage_in_one_line(tmp_path, capsys, blob):
    path = tmp_path / "garbage.ckpt"
    path.write_bytes(blob)
    for argv in (["verify", str(path)], ["provenance", str(path)]):
        status = main(argv)
        err = capsys.readouterr().err
        assert status in (1, 2)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


json_values = st.recursive(st.none() | st.booleans() | st.floats(allow_nan=False) |
                           st.integers() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) |
                           st.dictionaries(st.text(max_size=10), inner, max_size=4),
                           max_leaves=12)


@SETTINGS
@given(record=st.dictionaries(st.text(max_size=15), json_values, max_size=8))
def test_arbitrary_json_is_refused_as_a_record_with_one_reason(record):
    try:
        Provenance.from_dict(record)
    except (ValueError, TypeError) as err:
        assert "\n" not in str(err)


@SETTINGS
@given(lines=st.lists(st.text(max_size=80), min_size=1, max_size=5))
def test_garbage_spool_files_are_refused_with_one_reason(tmp_path, lines):
    path = tmp_path / "spool.jsonl"
    path.write_text("\n".join(lines))
    try:
        report = sync_spool(path, tracking_uri=f"sqlite:///{tmp_path}/x.db")
    except SpoolError as err:
        assert "\n" not in str(err)
    else:
        assert all("\n" not in line for line in [*report.refused, *report.warnings])


def test_a_record_with_the_schema_but_missing_fields_is_refused():
    with pytest.raises((TypeError, ValueError)):
        Provenance.from_dict({"schema": "depth.provenance/1", "train_joules": 1.0})
