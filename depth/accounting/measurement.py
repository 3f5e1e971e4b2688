"""Analysis of meter readings for the GPU measurement suite (`scripts/gpu_suite.py`).

Framework-free arithmetic on recorded readings, so that it is checked in CI on synthetic
data while the readings themselves come from a real GPU: latency percentiles, a counter's
update period, trapezoid integration of power samples, the disagreement of two energy
figures, per-step attribution error against a reference, and overhead ratios.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear between order statistics."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def latency_stats(seconds: Sequence[float]) -> dict[str, float]:
    """Median, p99 and max of call durations, in microseconds."""
    us = [s * 1e6 for s in seconds]
    return {"n": len(us), "median_us": statistics.median(us), "p99_us": percentile(us, 99),
            "max_us": max(us)}


def update_period(samples: Sequence[tuple[float, float]]) -> dict[str, float | int]:
    """How often a polled counter's value changes: the intervals between the times it
    changed (first poll that saw each new value). Polling faster than the counter updates
    is what makes this meaningful; the poll interval bounds its resolution."""
    changes = [t for (t, v), (_, prev) in zip(samples[1:], samples) if v != prev]
    gaps = [b - a for a, b in zip(changes, changes[1:])]
    if not gaps:
        return {"changes": len(changes), "median_s": math.nan, "p10_s": math.nan,
                "p90_s": math.nan}
    return {"changes": len(changes), "median_s": statistics.median(gaps),
            "p10_s": percentile(gaps, 10), "p90_s": percentile(gaps, 90)}


def integrate_power(samples: Sequence[tuple[float, float]]) -> float:
    """Joules from (time s, power W) samples, trapezoid rule."""
    return sum((t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in zip(samples, samples[1:]))


def disagreement_pct(reference_j: float, other_j: float) -> float:
    """(other - reference) / reference, in percent."""
    if reference_j == 0:
        raise ValueError("reference energy is 0")
    return 100.0 * (other_j - reference_j) / reference_j


def attribution_error(reference: Sequence[float], other: Sequence[float]) -> dict[str, float]:
    """Per-step joules of `other` against `reference` (same steps): the distribution of
    relative errors per step and the closure (difference of the totals), in percent."""
    if len(reference) != len(other) or not reference:
        raise ValueError("need the same, non-zero number of steps in both")
    errors = [100.0 * (o - r) / r for r, o in zip(reference, other) if r > 0]
    absolute = [abs(e) for e in errors]
    return {"steps": len(reference), "median_abs_pct": statistics.median(absolute),
            "p90_abs_pct": percentile(absolute, 90), "max_abs_pct": max(absolute),
            "mean_pct": statistics.fmean(errors),
            "closure_pct": disagreement_pct(sum(reference), sum(other))}


def overhead_ratio(with_s: Sequence[float], without_s: Sequence[float]) -> dict[str, float]:
    """Median time with over median time without (alternated runs), and the spread of the
    per-pair ratios."""
    pairs = [w / b for w, b in zip(with_s, without_s)]
    return {"ratio": statistics.median(with_s) / statistics.median(without_s),
            "pair_min": min(pairs), "pair_max": max(pairs), "runs": len(pairs)}


def step_joules(reads: Sequence[tuple[float, float, int | None]],
                max_lag_s: float = 1.0) -> list[float]:
    """Joules per step from the meter reads a run made, by the ledger's attribution
    (counter updates at the midpoint between reads, boundaries on the line between
    updates): the same arithmetic as `DepthCallback`, on recorded data.

    Args:
        reads: (time s, cumulative joules, step or None) in time order: the first is the
            start of the first step, each read with a step number ends that step, and the
            last read closes the run (taken as exact).
        max_lag_s: As `depth.accounting.ledger.CounterInterpolator`.

    Returns:
        Joules of each step, in step order: the attributed cumulative value at the last
        step's end minus the first read (what is left to the final read is the tail).
    """
    from depth.accounting.attribution import CounterInterpolator

    t0, e0, _ = reads[0]
    interp = CounterInterpolator(t0, e0, max_lag_s)
    at: dict[int, float] = {}
    for t, e, key in reads[1:-1]:
        at.update(interp.observe(t, e, key))
    t_end, e_end, key_end = reads[-1]
    at.update(interp.observe(t_end, e_end, key_end))
    at.update(interp.close(t_end, e_end))
    steps = sorted(at)
    values = [e0] + [at[k] for k in steps]
    return [b - a for a, b in zip(values, values[1:])]


def summarize(results: Mapping[str, object]) -> str:
    """A short Markdown summary of a suite result (one bullet per section)."""
    lines = []
    for key, value in results.items():
        if isinstance(value, Mapping):
            inner = ", ".join(f"{k}={_fmt(v)}" for k, v in value.items()
                              if not isinstance(v, (Mapping, list)))
            lines.append(f"- **{key}**: {inner}")
        else:
            lines.append(f"- **{key}**: {_fmt(value)}")
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
