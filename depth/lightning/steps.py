"""Lightning's optimizer-step count, read at every batch for the price of one attribute.

``trainer.global_step`` walks five properties (trainer, loop, strategy, module, progress)
on every call: a few microseconds a batch inside a training loop, where caches are cold.
Its value is one counter of a progress object that Lightning updates in place for the
whole fit (a resume loads into it), so the callback reads that counter directly.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import pytorch_lightning as pl


def step_counter(trainer: pl.Trainer) -> Callable[[], int]:
    """A call that returns ``trainer.global_step``, made once per fit (at its start).

    The counter ``trainer.global_step`` reads (automatic or manual optimization, as the
    module is now) is bound directly; where Lightning's loops do not have it, or it does
    not equal ``global_step`` now, the property itself is read at every call.
    """
    global_step = partial(getattr, trainer, "global_step")
    try:
        loop = trainer.fit_loop.epoch_loop
        if trainer.lightning_module is None or trainer.lightning_module.automatic_optimization:
            total = loop.automatic_optimization.optim_progress.optimizer.step.total
        else:
            total = loop.manual_optimization.optim_step_progress.total
        counter = partial(getattr, total, "completed")
        if counter() == trainer.global_step and isinstance(counter(), int):
            return counter
    except AttributeError:
        pass
    return global_step
