"""The live figures of a fit for a progress bar: joules so far, watts, tokens per Wh."""

from __future__ import annotations

from collections.abc import Sequence

from depth.accounting.ledger import Point


class FitProgress:
    """Totals of the points of the fit in progress (the model's history aside)."""

    def __init__(self) -> None:
        self.latest: Point | None = None
        self.joules = 0.0
        self.tokens: int | None = 0

    def add(self, points: Sequence[Point]) -> None:
        for point in points:
            self.joules += point.interval_joules
            self.tokens = (None if point.tokens is None or self.tokens is None
                           else self.tokens + point.tokens)
        if points:
            self.latest = points[-1]

    def figures(self) -> dict[str, float]:
        """``J`` (cumulative joules of the whole history), ``W`` (mean watts since the
        previous point) and ``tok/Wh`` (training tokens per Wh over this fit, when tokens
        are known); empty before the first point."""
        point = self.latest
        if point is None:
            return {}
        out = {"J": round(point.joules, 1), "W": round(point.watts, 1)}
        if self.tokens is not None and self.joules > 0:
            out["tok/Wh"] = round(self.tokens / (self.joules / 3600.0))
        return out
