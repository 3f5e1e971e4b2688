"""Physical limits and reference points for depth: Landauer's bound, compute ceilings.

Framework-free arithmetic. Sources (see docs/method.md):

- Landauer (1961): erasing one bit costs at least k·T·ln 2; 2.871e-21 J at 300 K.
- Patterson et al. (2021), "Carbon Emissions and Large Neural Network Training": GPT-3
  (175B parameters) took ~1,287 MWh to train, ~26.5 J per parameter.
- Dense BF16 peak and board power from the vendors' datasheets (SXM boards for A100/H100/
  H200): the compute ceiling is peak FLOP/s over board watts, FLOP per joule.
- The project's founding notes: ~160 tokens/Wh on a local RTX 3090, ~1,500 tokens/Wh when
  an A100 serves; ML.ENERGY leaderboard v3: Llama-3.1-8B on one H100 with vLLM at large
  batch, ~0.07 J/token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# GPT-3's ~1,287 MWh for 175B parameters (~26.5 J/param) live beside the record's summary
from depth.record.summary import (  # noqa: F401 (re-exported)
    GPT3_J_PER_PARAMETER,
    GPT3_PARAMETERS,
    GPT3_TRAIN_WH,
)

BOLTZMANN_J_PER_K = 1.380649e-23  # exact (SI 2019)
J_PER_WH = 3600.0


def landauer_j_per_bit(temperature_k: float = 300.0) -> float:
    """The least energy to erase one bit at `temperature_k`: k·T·ln 2 (J)."""
    if not temperature_k > 0:
        raise ValueError(f"temperature_k must be > 0; got {temperature_k}")
    return BOLTZMANN_J_PER_K * temperature_k * math.log(2)


def bits_removed_per_token(vocab_size: int, cross_entropy_nats: float) -> float:
    """Uncertainty a predicted token removes: log2(V) bits for a uniform guess, minus the
    model's remaining uncertainty, its cross-entropy in bits (never below 0)."""
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2; got {vocab_size}")
    return max(0.0, math.log2(vocab_size) - cross_entropy_nats / math.log(2))


def landauer_j_per_token(vocab_size: int, cross_entropy_nats: float,
                         temperature_k: float = 300.0) -> float:
    """Landauer's bound for the bits one token removes (J/token)."""
    return bits_removed_per_token(vocab_size, cross_entropy_nats) * landauer_j_per_bit(
        temperature_k)


def landauer_j_per_parameter(bits_per_parameter: int = 16, temperature_k: float = 300.0
                             ) -> float:
    """Landauer's bound for writing one parameter of `bits_per_parameter` bits (J)."""
    return bits_per_parameter * landauer_j_per_bit(temperature_k)


@dataclass(frozen=True)
class Hardware:
    """A device's compute ceiling.

    Attributes:
        name: The device.
        peak_flops: Dense peak FLOP/s at the precision in question (BF16 by default).
        board_power_w: Board power (TDP) in watts.
        source: Where the figures come from.
    """

    name: str
    peak_flops: float
    board_power_w: float
    source: str = "vendor datasheet (dense BF16, board power)"

    @property
    def flops_per_joule(self) -> float:
        return self.peak_flops / self.board_power_w


HARDWARE: dict[str, Hardware] = {h.name: h for h in (
    Hardware("A100", 312e12, 400.0),
    Hardware("H100", 989e12, 700.0),
    Hardware("H200", 989e12, 700.0),
    Hardware("RTX 4090", 165e12, 450.0),
    Hardware("RTX 3090", 71e12, 350.0),
)}


def hardware(spec: str) -> Hardware:
    """A known device by name (matched within a name such as ``NVIDIA H100 80GB HBM3``),
    or ``custom:PEAK_TFLOPS:WATTS[:NAME]`` for anything else, CPUs included."""
    if spec.startswith("custom:"):
        parts = spec.split(":")
        try:
            peak_tflops, watts = float(parts[1]), float(parts[2])
        except (IndexError, ValueError):
            raise ValueError(f"hardware {spec!r}: write custom:PEAK_TFLOPS:WATTS[:NAME], "
                             "e.g. custom:2.5:280:EPYC-7B13") from None
        if not (peak_tflops > 0 and watts > 0):
            raise ValueError(f"hardware {spec!r}: peak and watts must be > 0")
        name = parts[3] if len(parts) > 3 else "custom"
        return Hardware(name, peak_tflops * 1e12, watts, source="given by the user")
    for name in sorted(HARDWARE, key=len, reverse=True):  # "RTX 4090" before shorter names
        if name.lower() in spec.lower():
            return HARDWARE[name]
    raise ValueError(f"hardware {spec!r} is not in the table ({', '.join(HARDWARE)}); give "
                     "custom:PEAK_TFLOPS:WATTS")


def ceiling_tokens_per_wh(flops_per_token: float, device: Hardware) -> float:
    """Tokens per Wh if every joule bought peak FLOPs: FLOP/J over FLOP/token, x 3600."""
    if not flops_per_token > 0:
        raise ValueError(f"flops_per_token must be > 0; got {flops_per_token}")
    return device.flops_per_joule / flops_per_token * J_PER_WH


def tokens_per_wh(tokens: float, joules: float) -> float:
    """Tokens per watt-hour: tokens / (joules / 3600)."""
    if not joules > 0:
        raise ValueError(f"joules must be > 0; got {joules}")
    return tokens / (joules / J_PER_WH)


def wh_per_million_tokens(tokens_per_wh_: float) -> float:
    """Energy per million tokens (Wh)."""
    return 1e6 / tokens_per_wh_


@dataclass(frozen=True)
class Reference:
    """A published or founding-notes figure to compare against."""

    name: str
    tokens_per_wh: float
    source: str

    @property
    def joules_per_token(self) -> float:
        return J_PER_WH / self.tokens_per_wh


REFERENCES = (
    Reference("local RTX 3090", 160.0, "the project's founding notes"),
    Reference("A100 serving", 1500.0, "the project's founding notes"),
    Reference("Llama-3.1-8B, vLLM, one H100", J_PER_WH / 0.070, "ML.ENERGY leaderboard v3"),
)
