"""Physics constants and ceilings, and amortization arithmetic, against hand-computed cases."""

from __future__ import annotations

import math

import pytest

from depth.serving import physics
from depth.serving.amortize import amortize, amortized_j_per_token, break_even_tokens


def test_landauer_bound_at_300_k():
    assert physics.landauer_j_per_bit() == pytest.approx(2.871e-21, rel=1e-3)
    assert physics.landauer_j_per_bit(600.0) == pytest.approx(2 * 2.871e-21, rel=1e-3)
    with pytest.raises(ValueError, match="temperature_k"):
        physics.landauer_j_per_bit(0)


def test_bits_a_token_removes_are_log2_v_minus_the_model_uncertainty():
    assert physics.bits_removed_per_token(256, 0.0) == 8.0
    assert physics.bits_removed_per_token(256, 4 * math.log(2)) == pytest.approx(4.0)  # 4 bits left
    assert physics.bits_removed_per_token(256, 100.0) == 0.0  # worse than uniform: nothing
    assert physics.landauer_j_per_token(256, 4 * math.log(2)) == pytest.approx(
        4 * physics.landauer_j_per_bit())
    assert physics.landauer_j_per_parameter(16) == pytest.approx(16 * 2.871e-21, rel=1e-3)


def test_gpt3_depth_per_parameter():
    assert physics.GPT3_J_PER_PARAMETER == pytest.approx(1287e6 * 3600 / 175e9)
    assert 26 < physics.GPT3_J_PER_PARAMETER < 27


def test_compute_ceiling_by_hand():
    h100 = physics.hardware("NVIDIA H100 80GB HBM3")
    assert h100.name == "H100" and h100.flops_per_joule == pytest.approx(989e12 / 700)
    # 2 GFLOP per token at 1.4129e12 FLOP/J: 706.4 tokens/J = 2.543e6 tokens/Wh
    assert physics.ceiling_tokens_per_wh(2e9, h100) == pytest.approx(989e12 / 700 / 2e9 * 3600)
    assert physics.hardware("NVIDIA GeForce RTX 4090").peak_flops == 165e12
    cpu = physics.hardware("custom:2.5:280:EPYC")
    assert (cpu.name, cpu.peak_flops, cpu.board_power_w) == ("EPYC", 2.5e12, 280.0)
    with pytest.raises(ValueError, match="custom:PEAK_TFLOPS:WATTS"):
        physics.hardware("TPU v5")
    with pytest.raises(ValueError, match="custom:PEAK_TFLOPS:WATTS"):
        physics.hardware("custom:fast:hot")


def test_reference_points():
    refs = {r.name: r for r in physics.REFERENCES}
    assert refs["local RTX 3090"].tokens_per_wh == 160
    assert refs["A100 serving"].joules_per_token == pytest.approx(2.4)
    assert refs["Llama-3.1-8B, vLLM, one H100"].joules_per_token == pytest.approx(0.07)
    assert physics.tokens_per_wh(3600, 3600) == 3600  # 1 Wh for 3600 tokens
    assert physics.wh_per_million_tokens(1500) == pytest.approx(666.67, rel=1e-4)


def test_amortization_by_hand():
    assert amortized_j_per_token(3600.0, 10_000, 0.36) == pytest.approx(0.72)
    assert break_even_tokens(3600.0, 0.36) == pytest.approx(10_000)
    result = amortize(3600.0, 0.36, tokens_per_day=1000, days=5)
    assert result.served_tokens == 5000
    assert result.amortized_j_per_token == pytest.approx(3600 / 5000 + 0.36)
    assert result.training_share == pytest.approx(0.72 / 1.08)
    assert result.break_even_days == pytest.approx(10.0)
    with pytest.raises(ValueError, match="served tokens"):
        amortize(1.0, 0.1)
    with pytest.raises(ValueError, match="inference J/token"):
        break_even_tokens(1.0, 0.0)
