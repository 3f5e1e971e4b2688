"""Attribution: where a step boundary falls on a counter that refreshes slower than a step.

Hardware counters refresh slower than a short step (NVML: ~100 ms). Reading
such a counter at each step boundary gives a staircase: zero, zero, spike. Instead, each
device's counter is treated as samples of a continuous curve: when a read shows a new
value, the update happened at some time between this read and the previous one, placed at
the midpoint (its expected time); boundaries in between are placed on the straight line
from the previous update to this one. A boundary is therefore final only once the next
update arrives (at most one refresh period later), and each boundary's value lies between
the counter values around it, so closure is exact and values never decrease. A counter
silent for `max_lag_s` is taken as flat (no energy) for the boundaries it kept waiting.
"""

from __future__ import annotations

from collections import deque


class CounterInterpolator:
    """Places step boundaries on a piecewise-linear curve through a counter's updates.

    Args:
        t0_s: Monotonic time of the first reading.
        energy0_j: The first reading.
        max_lag_s: Boundaries older than this with no counter update are finalized flat.
    """

    def __init__(self, t0_s: float, energy0_j: float, max_lag_s: float = 1.0):
        self.anchor = (t0_s, energy0_j)  # last known point of the curve
        self.last = (t0_s, energy0_j)  # last read
        self.max_lag_s = max_lag_s
        self.pending: deque[tuple[int, float]] = deque()  # (key, t_s), oldest first

    def observe(self, t_s: float, energy_j: float, key: int | None = None) -> dict[int, float]:
        """Feeds a read; `key` marks it as a boundary. Returns boundaries now final."""
        done: dict[int, float] = {}
        t_prev, e_prev = self.last
        if energy_j != e_prev and t_s > t_prev:
            t_update = 0.5 * (t_prev + t_s)  # the update happened in (t_prev, t_s]
            self._place(t_update, energy_j, done)
        self.last = (t_s, energy_j) if t_s >= t_prev else self.last
        if key is not None:
            self.pending.append((key, t_s))
        if self.pending and t_s - self.pending[0][1] > self.max_lag_s:
            # A counter silent this long has not moved: those boundaries got no energy.
            anchor_e = self.anchor[1]
            while self.pending and t_s - self.pending[0][1] > self.max_lag_s:
                done[self.pending.popleft()[0]] = anchor_e
            self.anchor = (max(self.anchor[0], t_prev), anchor_e)
        return done

    def _place(self, t_s: float, energy_j: float, done: dict[int, float]) -> None:
        t_a, e_a = self.anchor
        while self.pending and self.pending[0][1] <= t_s:
            key, t_b = self.pending.popleft()
            frac = (t_b - t_a) / (t_s - t_a) if t_s > t_a else 1.0
            done[key] = e_a + (energy_j - e_a) * min(max(frac, 0.0), 1.0)
        self.anchor = (t_s, energy_j)

    def settle(self, t_s: float, energy_j: float, key: int) -> dict[int, float]:
        """`close` at a read that also ends boundary `key` (a checkpoint taken at that step):
        `key`, if pending and the latest, is placed at this read, so it gets exactly
        `energy_j`, the value the checkpoint records; earlier ones lie on the line to it."""
        if self.pending and self.pending[-1][0] == key:
            self.pending[-1] = (key, max(self.pending[-1][1], t_s))
        return self.close(t_s, energy_j)

    def close(self, t_s: float, energy_j: float) -> dict[int, float]:
        """Final read, taken as exact at `t_s`: every pending boundary becomes final."""
        done: dict[int, float] = {}
        self._place(max(t_s, self.anchor[0]), energy_j, done)
        for key, _ in self.pending:  # boundaries after t_s (clock quirks): at the end value
            done[key] = energy_j
        self.pending.clear()
        self.last = (t_s, energy_j)
        return done
