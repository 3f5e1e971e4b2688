"""How the sweep drives models it did not write: with a KV cache or recomputing the
context, cropped to the model's context, logits in any usual shape, or a generate
callable. A work-proportional meter makes every joule checkable by hand."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from depth.gpt.model import GPT, GPTConfig
from depth.serving.adapters import GenerateRunner, context_tokens, logits_of
from depth.serving.inference import EvalConfig, measure
from tests.serving.test_inference import PerTokenEnergy
from tests.support.outsider_gpt import LitNanoGPT

ONE = dict(batch_sizes=[2], repeats=1, min_window_s=0.0, idle_s=0.0)


def test_past_the_context_the_cache_is_rebuilt_and_the_recompute_is_cropped():
    # depth's GPT raises past its block_size: measuring 6 + 6 tokens with block 8 at all
    # proves the cropping; the joules say how much each path computed.
    model = PerTokenEnergy(GPT(GPTConfig(vocab_size=64, block_size=8, n_layer=1, n_head=1,
                                         n_embd=8)), j_per_token=0.01)
    config = EvalConfig(prompt_tokens=6, new_tokens=6, **ONE)
    cached = measure(model, model.read, config)
    (b,) = cached.batches
    assert cached.kv_cache is True and cached.context_tokens == 8 and cached.cropped
    assert cached.vocab_size == 64  # from the logits
    assert b.prefill_joules == pytest.approx(0.01 * 2 * 6)
    # decode: 2 cached steps fill the 8-token context, the cache is rebuilt from the last
    # 4 tokens, then 3 more cached steps: 1 + 1 + 4 + 1 + 1 + 1 = 9 tokens per sequence
    assert b.decode_joules == pytest.approx(0.01 * 2 * 9)

    recomputed = measure(model, model.read, config, kv_cache=False)
    (b,) = recomputed.batches
    assert recomputed.kv_cache is False and recomputed.cropped
    # each step runs the whole context, at most 8 tokens: 7 + 8 x 5 = 47 per sequence
    assert b.decode_joules == pytest.approx(0.01 * 2 * 47)
    assert b.prefill_joules == pytest.approx(0.01 * 2 * 6)


def test_a_nanogpt_style_module_runs_without_a_cache_and_says_so():
    torch.manual_seed(0)
    module = LitNanoGPT(block_size=16, vocab_size=50, n_layer=1, n_head=2, n_embd=16)
    ticks = {"j": 0.0}
    inner = module.model.forward

    def counted(idx, targets=None):  # the meter: 1 mJ per token the model processes
        ticks["j"] += 0.001 * idx.numel()
        return inner(idx, targets)

    module.model.forward = counted
    config = EvalConfig(prompt_tokens=12, new_tokens=8, **ONE)
    result = measure(module, lambda: {"cpu:0": ticks["j"]}, config)
    (b,) = result.batches
    assert result.kv_cache is False and result.vocab_size == 50
    assert result.context_tokens == 16 and result.cropped
    assert b.tokens == 16
    # 13, 14, 15, 16 tokens, then 16 four more times (cropped): 122 per sequence
    assert b.decode_joules == pytest.approx(0.001 * 2 * 122)
    assert result.to_dict()["kv_cache"] is False


def test_logits_in_every_usual_shape():
    logits = torch.arange(24.0).reshape(2, 3, 4)
    last = logits[:, -1]
    for out in (logits, logits[:, -1:], last, (logits, None), [logits],
                SimpleNamespace(logits=logits)):
        assert torch.equal(logits_of(out), last)
    with pytest.raises(ValueError, match="B x T x V"):
        logits_of(torch.zeros(2))
    with pytest.raises(ValueError, match="dict"):
        logits_of({"logits": logits})


def test_the_context_is_found_where_models_keep_it():
    assert context_tokens(LitNanoGPT(block_size=24, n_layer=1, n_embd=16)) == 24  # hparams
    assert context_tokens(SimpleNamespace(config=SimpleNamespace(n_positions=1024))) == 1024
    wrapper = torch.nn.Sequential(GPT(GPTConfig(vocab_size=8, block_size=12, n_layer=1,
                                                n_head=1, n_embd=8)))
    assert context_tokens(wrapper) == 12  # a module inside it
    assert context_tokens(torch.nn.Linear(2, 2)) is None


def test_a_generate_callable_must_produce_the_tokens_it_is_charged_for():
    def stops_early(prompt, new_tokens):  # EOS after 2 tokens
        return torch.cat([prompt, prompt[:, :2]], dim=1)

    config = EvalConfig(prompt_tokens=4, new_tokens=6, **ONE)
    with pytest.raises(ValueError, match="min_new_tokens"):
        measure(GenerateRunner(stops_early), lambda: {"cpu:0": 0.0}, config, vocab_size=10)
    with pytest.raises(ValueError, match="vocab_size"):
        measure(GenerateRunner(stops_early), lambda: {"cpu:0": 0.0}, config)
