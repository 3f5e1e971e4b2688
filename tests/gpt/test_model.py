"""The GPT: shapes, KV cache, weight tying, parameter and FLOP counts."""

from __future__ import annotations

import pytest
import torch

from depth.gpt.model import GPT, GPTConfig

SMALL = GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=16)


def test_forward_shapes_and_loss():
    torch.manual_seed(0)
    model = GPT(SMALL)
    idx, targets = torch.randint(0, 64, (3, 10)), torch.randint(0, 64, (3, 10))
    logits, loss, cache = model(idx, targets)
    assert logits.shape == (3, 10, 64)
    assert loss is not None and loss.item() == pytest.approx(torch.log(torch.tensor(64.0)).item(),
                                                             rel=0.05)  # untrained: ~ln V
    assert len(cache) == 2 and cache[0][0].shape == (3, 2, 10, 8)  # B x H x T x D


def test_kv_cache_gives_the_same_logits_as_a_full_pass():
    torch.manual_seed(0)
    model = GPT(SMALL).eval()
    idx = torch.randint(0, 64, (2, 12))
    full, _, _ = model(idx)
    _, _, cache = model(idx[:, :5])
    one, _, cache = model(idx[:, 5:6], past=cache)  # one token at a time ...
    several, _, _ = model(idx[:, 6:12], past=cache)  # ... and several after a cache
    torch.testing.assert_close(one[:, 0], full[:, 5], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(several, full[:, 6:12], atol=1e-5, rtol=1e-5)


def test_generate_with_the_cache_equals_greedy_decoding_without_it():
    torch.manual_seed(0)
    model = GPT(SMALL).eval()
    prompt = torch.randint(0, 64, (2, 4))
    out = model.generate(prompt, max_new_tokens=8, temperature=0)
    seq = prompt
    for _ in range(8):  # recompute everything at every step, no cache
        logits, _, _ = model(seq)
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)
    with pytest.raises(ValueError, match="block_size"):
        model.generate(prompt, max_new_tokens=13)


def test_weights_are_tied_and_gpt2_small_has_its_124m_parameters():
    model = GPT(SMALL)
    assert model.lm_head.weight is model.transformer.wte.weight
    with torch.device("meta"):
        gpt2 = GPT(GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12,
                             n_embd=768))
    assert gpt2.num_params(non_embedding=False) == 124_439_808  # GPT-2 small, tied
    assert gpt2.num_params() == 124_439_808 - 1024 * 768  # without positions


def test_flops_per_token_by_hand():
    model = GPT(SMALL)
    n = model.num_params()
    attention_forward = 4 * 2 * 16 * 16  # 4 L C T
    assert model.flops_per_token(training=False) == 2 * n + attention_forward
    assert model.flops_per_token() == 3 * (2 * n + attention_forward)  # 6N + 12 L C T
    assert model.flops_per_token(training=False, context=8) == 2 * n + 4 * 2 * 16 * 8


@pytest.mark.parametrize("bad", [dict(n_embd=15), dict(n_layer=0), dict(dropout=1.0),
                                 dict(vocab_size=True)])
def test_bad_config_names_the_field(bad):
    with pytest.raises(ValueError, match=next(iter(bad)).split("_")[0]):
        GPTConfig(**{**SMALL.__dict__, **bad})
