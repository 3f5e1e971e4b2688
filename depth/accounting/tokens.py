"""How many training tokens a batch holds, without guessing and without a CUDA sync."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

TOKEN_KEYS = ("input_ids", "tokens", "idx", "x")


def _token_tensor(value: Any) -> bool:
    import torch  # cheap after the first call; keeps this module importable without torch

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
    if isinstance(batch, Mapping):
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
        return lambda batch: int(tokens_per_batch(batch))
    fixed = int(tokens_per_batch)
    return lambda batch: fixed
