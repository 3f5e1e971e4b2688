"""The live energy figures in whatever progress bar the Trainer shows (TQDM, Rich, a user's).

Every Lightning progress bar draws ``trainer.progress_bar_metrics``: the logger connector's
dict, which that property returns itself (after adding what ``self.log(..., prog_bar=True)``
gave). Entries put there are drawn by the bar and never reach a logger: loggers are fed
from the logged results, not from this dict, so the energy metrics the sinks already send
are not sent a second time. The figures change only when the ledger settles points (at
most every ``flush_interval_s``), never in the per-step hook.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PREFIXES = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))
FIGURES = ("J", "W", "tok/Wh")  # the keys the bar shows (`FitProgress.figures`)


def compact(value: float) -> str:
    """Three significant digits with an SI prefix: ``812``, ``12.3k``, ``4.56M``."""
    magnitude = abs(value)
    for scale, prefix in PREFIXES:
        if magnitude >= scale * 0.9995:  # 999.6 reads 1.00k, not 1e+03
            return f"{value / scale:.3g}{prefix}"
    return f"{value:.3g}"


def show_figures(trainer: Any, figures: Mapping[str, float]) -> None:
    """Puts `figures` (``J``, ``W``, ``tok/Wh``), formatted compactly, into the progress bar
    of `trainer`; nothing when it has none (``enable_progress_bar=False``) or on ranks
    other than zero, which draw no bar."""
    if not figures or trainer.progress_bar_callback is None or not trainer.is_global_zero:
        return
    trainer.progress_bar_metrics.update({key: compact(v) for key, v in figures.items()})
