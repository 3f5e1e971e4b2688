"""How many training tokens a batch holds, without guessing and without a CUDA sync."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

TOKEN_KEYS = ("input_ids", "tokens", "idx", "x")


@cache
def _torch() -> Any:
    import torch  # here, so that this module imports without torch

    return torch


def _token_tensor(value: Any) -> bool:
    torch = _torch()  # an import statement at every batch costs more than this call
    return (isinstance(value, torch.Tensor) and value.dim() == 2
            and not value.is_floating_point() and not value.is_complex()
            and value.dtype != torch.bool)


def infer_tokens(batch: Any) -> int | None:
    """Tokens in a batch: the element count of its integer B x T token tensor.

    Looks at the batch itself, then mapping keys ``input_ids``, ``tokens``, ``idx``, ``x``,
    then the first 2-D integer tensor of a mapping or sequence. Returns ``None`` when there
    is none, so that no token metric is made up. Padding is counted (``numel`` reads only
    the shape: counting a mask would force a device sync on every step).
    """
    if _token_tensor(batch):
        return int(batch.numel())
    if type(batch) in (list, tuple):  # the common batch, before the slower ABC check
        values = batch
    elif isinstance(batch, Mapping):
        for key in TOKEN_KEYS:
            if _token_tensor(batch.get(key)):
                return int(batch[key].numel())
        values = list(batch.values())
    elif isinstance(batch, (list, tuple)):
        values = list(batch)
    else:
        return None
    for value in values:
        if _token_tensor(value):
            return int(value.numel())
    return None


def token_counter(
    tokens_per_batch: int | Callable[[Any], int] | None,
) -> Callable[[Any], int | None]:
    """The function that counts a batch's tokens for a `DepthCallback` option value."""
    if tokens_per_batch is None:
        return infer_tokens
    if callable(tokens_per_batch):
        return _checked_callable(tokens_per_batch)
    fixed = int(tokens_per_batch)
    return lambda batch: fixed


def _checked_callable(count: Callable[[Any], int]) -> Callable[[Any], int | None]:
    """A user's ``tokens_per_batch(batch)``: a call that raises or does not return a
    non-negative int makes tokens unknown for the fit (one warning), never stops training."""
    broken: list[str] = []

    def counted(batch: Any) -> int | None:
        if broken:
            return None
        try:
            value = count(batch)
        except Exception as err:  # the user's function: training goes on without tokens
            broken.append(f"raised {type(err).__name__}: {err}")
        else:
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                return value
            if hasattr(value, "__index__") and not isinstance(value, bool) and int(value) >= 0:
                return int(value)  # numpy and 0-d torch integers
            broken.append(f"returned {value!r}")
        warnings.warn(f"depth: tokens_per_batch(batch) {broken[0]}; it must return a "
                      "non-negative int. Token metrics are off for this fit", stacklevel=2)
        return None

    return counted
