"""`depth eval` on a busy machine: repeats that disagree are measured again (a bounded
number of times) and, if they still disagree, flagged in the table, the JSON and MLflow;
a meter started by its first read charges nothing to the first window.

The hardware boundary is faked with meters from tests/doubles; the model, the sweep, the
checkpoint and the SQLite MLflow store are real.
"""

from __future__ import annotations

import json
import random

import pytest
import torch
from mlflow import MlflowClient

from depth.gpt.model import GPT, GPTConfig
from depth.serving.inference import EvalConfig, measure, spread_ratio
from tests.doubles.meters import IncrementMeter, LazyStartMeter
from tests.support.tiny_recipe import train_tiny_recipe
from tests.serving.test_inference import model_adapter


def _noisy(n: int, seed: int = 0) -> list[float]:
    """Increments spread over three decades, like the 7,776 / 1,022,651 / 16,062 tokens/Wh
    one batch size gave in three runs on a busy machine."""
    rng = random.Random(seed)
    return [10 ** rng.uniform(0, 3) for _ in range(n)]


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return model_adapter(GPT(GPTConfig(vocab_size=64, block_size=32, n_layer=1, n_head=2,
                                       n_embd=16)))


def _config(**kw) -> EvalConfig:
    base = dict(batch_sizes=[1, 2], prompt_tokens=4, new_tokens=4, repeats=3,
                min_window_s=0.01, idle_s=0.0, remeasures=2)
    return EvalConfig(**{**base, **kw})


READS_PER_SET = 3 * 4  # repeats x (prefill start, end, decode start, end)


def test_unstable_repeats_are_remeasured_up_to_the_bound_then_flagged():
    meter = IncrementMeter(_noisy(1000))
    result = measure(_model(), meter.read, _config(), vocab_size=64)
    for b in result.batches:
        assert b.attempts == 3  # the first set and two re-measures, no more
        assert b.unstable and b.spread_ratio > 1.25
        assert b.spread_ratio == pytest.approx(spread_ratio(b.repeat_joules))
        assert min(b.repeat_joules) <= b.joules <= max(b.repeat_joules)
    assert meter.reads == 1 + 2 * 3 * READS_PER_SET  # one priming read, then the bound
    out = result.to_dict()
    assert out["unstable_batches"] == [1, 2] and out["best_unstable"] is True
    assert all(b["unstable"] for b in out["batches"])


def test_a_set_that_settles_is_kept_and_not_flagged():
    meter = IncrementMeter(_noisy(1 + READS_PER_SET), steady_j=1.0)  # busy, then quiet
    result = measure(_model(), meter.read, _config(batch_sizes=[1]), vocab_size=64)
    (b,) = result.batches
    assert b.attempts == 2 and not b.unstable
    assert b.spread_ratio == pytest.approx(1.0)  # the quiet set: 1 J per window end
    assert result.unstable_batches == [] and result.to_dict()["best_unstable"] is False


def test_best_batch_is_a_stable_one():
    # batch 1 settles (steady), batch 2 keeps spreading: 2 must not be called the best,
    # however many tokens/Wh its noise happens to give
    noisy = _noisy(1 + READS_PER_SET) + [1.0] * READS_PER_SET + _noisy(3 * READS_PER_SET, 1)
    meter = IncrementMeter(noisy, steady_j=1.0)
    result = measure(_model(), meter.read, _config(), vocab_size=64)
    assert result.unstable_batches == [2]
    assert result.best.batch_size == 1


@pytest.mark.parametrize("idle_s", [0.0, 0.1])
def test_energy_held_before_the_first_read_is_charged_to_no_window(idle_s):
    # 1000 J appear at the meter's second read (a sampler catching up on everything since
    # its creation); the model itself draws 1 W. Without a priming read, the first window
    # (idle, or with --idle-s 0 the first prefill) got the 1000 J: 42 J vs 0.04 J, seen.
    meter = LazyStartMeter(held_j=1000.0, power_w=1.0)
    config = _config(batch_sizes=[1], idle_s=idle_s, remeasures=0)  # no re-measure to hide it
    result = measure(_model(), meter.read, config, vocab_size=64)
    (b,) = result.batches
    assert max(b.repeat_joules) < 0.5  # 1 W x milliseconds per generation
    assert b.joules == pytest.approx(1.0 * b.seconds, rel=0.2, abs=1e-4)
    if idle_s:
        assert result.idle_w == pytest.approx(1.0, rel=0.2)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return train_tiny_recipe(tmp_path_factory.mktemp("busy"), "busy")


def test_unstable_batches_are_flagged_in_table_json_and_mlflow(checkpoint, capsys):
    from depth.cli.serving import _print_eval
    from depth.serving.evaluation import evaluate

    uri, ckpt = checkpoint
    meter = IncrementMeter(_noisy(1000))
    result = evaluate(ckpt, _config(), meter=meter, loss_batches=0, tracking_uri=uri)
    assert meter.closed
    assert result["unstable_batches"] == [1, 2]
    saved = json.loads(open(ckpt + ".depth-eval.json").read())
    assert [b["unstable"] for b in saved["batches"]] == [True, True]
    assert [b["attempts"] for b in saved["batches"]] == [3, 3]
    model = MlflowClient(uri).get_logged_model(result["logged_model"])
    assert model.tags["depth.inference_unstable_batches"] == "1,2"
    flags = {m.step: m.value for m in model.metrics if m.key == "inference/unstable_by_batch"}
    assert flags == {1: 1.0, 2: 1.0}
    spreads = {m.step: m.value for m in model.metrics
               if m.key == "inference/spread_ratio_by_batch"}
    assert spreads[1] == pytest.approx(saved["batches"][0]["spread_ratio"])
    _print_eval(result)
    table = capsys.readouterr().out
    assert "UNSTABLE batch 1" in table and "UNSTABLE batch 2" in table
    assert "best (UNSTABLE)" in table


def test_a_bad_spread_bound_is_one_line(capsys):
    from depth.cli import main

    assert main(["eval", "nowhere.ckpt", "--max-spread", "0.9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("depth eval: --max-spread takes") and "(got 0.9)" in err
    assert len(err.strip().splitlines()) == 1
