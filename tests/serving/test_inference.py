"""The tokens/Wh sweep with a deterministic meter: every figure checkable by hand."""

from __future__ import annotations

import pytest
import torch

from depth.gpt.model import GPT, GPTConfig
from depth.serving.inference import EvalConfig, measure, sweep_sizes


class PerTokenEnergy(torch.nn.Module):
    """Wraps a model so that every forward pass costs `j_per_token` joules per token it
    processes, on a counter a meter reads: energy that depends on the work, not on time."""

    def __init__(self, model: torch.nn.Module, j_per_token: float):
        super().__init__()
        self.model, self.j_per_token, self.joules = model, j_per_token, 0.0
        self.config = model.config

    def forward(self, idx, past=None):
        self.joules += self.j_per_token * idx.numel()
        logits, _, cache = self.model(idx, past=past)
        return logits, cache

    def read(self):
        return {"gpu:0": self.joules}


def test_sweep_arithmetic_with_a_work_proportional_meter():
    torch.manual_seed(0)
    model = PerTokenEnergy(GPT(GPTConfig(vocab_size=64, block_size=32, n_layer=1, n_head=2,
                                         n_embd=16)), j_per_token=0.01)
    config = EvalConfig(batch_sizes=[1, 3, 5], prompt_tokens=8, new_tokens=6, repeats=3,
                        min_window_s=0.02, idle_s=0.05)
    result = measure(model, model.read, config, vocab_size=64, method="work-counter")
    assert [b.batch_size for b in result.batches] == [1, 3, 5]
    assert result.idle_w == 0.0  # nothing runs while idle: no joules
    for b in result.batches:
        assert b.tokens == b.batch_size * 6
        assert b.prefill_joules == pytest.approx(0.01 * b.batch_size * 8)
        assert b.decode_joules == pytest.approx(0.01 * b.batch_size * 6)
        assert b.joules == pytest.approx(b.prefill_joules + b.decode_joules)
        assert b.tokens_per_wh == pytest.approx(b.tokens / (b.joules / 3600))
        assert b.tokens_per_wh == pytest.approx(6 * 3600 / (0.01 * 14))  # same at any batch
        assert b.net_tokens_per_wh == pytest.approx(b.tokens_per_wh)
        assert b.tokens_per_wh_spread[0] == pytest.approx(b.tokens_per_wh)
    assert result.joules_per_token == pytest.approx(0.01 * 14 / 6)
    out = result.to_dict()
    assert {"tokens_per_wh", "joules_per_token", "method", "batches"} <= set(out)
    assert set(out["batches"][0]) >= {"batch_size", "tokens", "joules", "seconds",
                                      "tokens_per_wh", "prefill_joules", "decode_joules"}


def test_net_of_idle_with_a_constant_power_meter():
    from tests.doubles.meters import ClockMeter

    meter = ClockMeter({"gpu:0": 50.0})
    model = GPT(GPTConfig(vocab_size=64, block_size=32, n_layer=1, n_head=2, n_embd=16))
    config = EvalConfig(batch_sizes=[2], prompt_tokens=4, new_tokens=4, repeats=3,
                        min_window_s=0.02, idle_s=0.1)
    result = measure(model_adapter(model), meter.read, config, vocab_size=64)
    assert result.idle_w == pytest.approx(50.0, rel=0.02)
    (b,) = result.batches
    assert b.joules == pytest.approx(50.0 * b.seconds, rel=0.05)  # power x time
    assert b.net_tokens_per_wh is None or b.net_tokens_per_wh > 10 * b.tokens_per_wh


def model_adapter(gpt: GPT) -> torch.nn.Module:
    class Adapter(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gpt, self.config = gpt, gpt.config

        def forward(self, idx, past=None):
            logits, _, cache = self.gpt(idx, past=past)
            return logits, cache

    return Adapter()


def test_bad_sweeps_are_refused():
    with pytest.raises(ValueError, match="dtype"):
        EvalConfig(dtype="int4")
    with pytest.raises(ValueError, match="batch_sizes"):
        EvalConfig(batch_sizes=[0])
    assert sweep_sizes(None, 64) == [1, 4, 16, 64]
    assert sweep_sizes([2, 8]) == [2, 8]
