"""Checks that a meter's read() never waits for its background sampler."""

from __future__ import annotations

import threading
from collections.abc import Callable


def stuck_sampler() -> tuple[Callable[..., None], threading.Event, threading.Event]:
    """(a function that blocks until released, 'inside' event, 'release' event)."""
    inside, release = threading.Event(), threading.Event()

    def block(*_: object) -> None:
        inside.set()
        release.wait(5)

    return block, inside, release


def read_returns_while_sampler_is_stuck(read: Callable[[], object], inside: threading.Event,
                                        timeout_s: float = 2.0) -> bool:
    """Starts the sampler with one read, waits until it is stuck, then reads again."""
    read()
    assert inside.wait(timeout_s), "the sampler never ran"
    done = threading.Event()
    threading.Thread(target=lambda: (read(), done.set()), daemon=True).start()
    return done.wait(timeout_s)
