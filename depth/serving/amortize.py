"""Training energy spread over served tokens, and the break-even point.

Framework-free. With training energy E_train (J), inference energy e (J/token) and N tokens
served, each token has cost ``E_train / N + e``; serving has used as much energy as
training once ``N = E_train / e`` (the break-even).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


def amortized_j_per_token(train_joules: float, served_tokens: float,
                          inference_j_per_token: float) -> float:
    """Joules per served token, training included: E_train / N + e."""
    if not served_tokens > 0:
        raise ValueError(f"served tokens must be > 0; got {served_tokens}")
    if train_joules < 0 or inference_j_per_token < 0:
        raise ValueError("energies must be >= 0")
    return train_joules / served_tokens + inference_j_per_token


def break_even_tokens(train_joules: float, inference_j_per_token: float) -> float:
    """Served tokens at which inference energy equals training energy: E_train / e."""
    if not inference_j_per_token > 0:
        raise ValueError(f"inference J/token must be > 0; got {inference_j_per_token}")
    return train_joules / inference_j_per_token


@dataclass
class Amortization:
    """Training energy over a serving horizon.

    Attributes:
        train_joules: The model's depth (own training, plus its parents' if it has them).
        inference_j_per_token: Measured inference energy per token.
        served_tokens: Tokens served over the horizon.
        amortized_j_per_token: E_train / N + e.
        training_share: The share of each served token's energy that is training's.
        break_even_tokens: N at which serving energy equals training energy.
        break_even_days: Days to reach it at `tokens_per_day` (when given).
        tokens_per_day: The serving rate, when the horizon was given as a rate.
    """

    train_joules: float
    inference_j_per_token: float
    served_tokens: float
    amortized_j_per_token: float
    training_share: float
    break_even_tokens: float
    break_even_days: float | None = None
    tokens_per_day: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def amortize(train_joules: float, inference_j_per_token: float, served_tokens: float | None
             = None, tokens_per_day: float | None = None, days: float | None = None
             ) -> Amortization:
    """Spreads `train_joules` over `served_tokens`, or over ``tokens_per_day x days``."""
    if served_tokens is None:
        if tokens_per_day is None or days is None:
            raise ValueError("give served tokens, or a daily rate and a horizon in days")
        served_tokens = tokens_per_day * days
    per_token = amortized_j_per_token(train_joules, served_tokens, inference_j_per_token)
    even = break_even_tokens(train_joules, inference_j_per_token)
    return Amortization(
        train_joules=train_joules, inference_j_per_token=inference_j_per_token,
        served_tokens=served_tokens, amortized_j_per_token=per_token,
        training_share=(train_joules / served_tokens) / per_token if per_token else 0.0,
        break_even_tokens=even,
        break_even_days=even / tokens_per_day if tokens_per_day else None,
        tokens_per_day=tokens_per_day)


DURATION_UNITS_S = (("years", 365.25 * 86400), ("days", 86400.0), ("hours", 3600.0),
                    ("minutes", 60.0))


def duration_text(days: float) -> str:
    """A duration in days in the largest unit it fills: ``7.77 seconds``, ``3.2 hours``,
    ``45.2 days``, ``1,234 years``; three significant digits below 100."""
    seconds = days * 86400.0
    unit, value = "seconds", seconds
    for name, size_s in DURATION_UNITS_S:
        if seconds >= size_s:
            unit, value = name, seconds / size_s
            break
    number = f"{value:,.0f}" if value >= 100 else f"{value:.3g}"
    return f"{number} {unit[:-1] if number == '1' else unit}"
