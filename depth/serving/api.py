"""The public Python route to tokens/Wh, for models and loops `depth eval` cannot load.

`measure_inference` takes a model (``forward(idx)`` returning logits; with ``past`` for a
KV cache, see `depth.serving.adapters`) or a ``generate(prompt, new_tokens)`` callable,
and returns the same JSON-ready result as ``depth eval --json``. With ``source=`` (or a
later `depth.log_inference`) the result is attached to the trained model it belongs to:
written beside its checkpoint and logged on its LoggedModel, where `depth amortize` and
`depth report` find it. `depth.inference_table` prints it as `depth eval` does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from depth.serving.adapters import GenerateRunner
from depth.serving.attach import (
    attach,
    count_parameters,
    python_warning,
    resolve_target,
    tie_warning,
)
from depth.serving.evaluation import measure_result
from depth.serving.inference import EvalConfig, sweep_sizes


def measure_inference(model: Any = None, *,
                      generate: Callable[[torch.Tensor, int], Any] | None = None,
                      source: str | None = None, meter: Any = "auto",
                      batch_sizes: Sequence[int] | None = None, prompt_tokens: int = 64,
                      new_tokens: int = 64, dtype: str | None = None,
                      device: str | None = None, vocab_size: int | None = None,
                      context_tokens: int | None = None, kv_cache: bool | None = None,
                      repeats: int = 3, min_window_s: float = 0.5, idle_s: float = 2.0,
                      hardware: str | None = None, flops_per_token: float | None = None,
                      temperature_k: float = 300.0, tracking_uri: str | None = None,
                      log: bool = True, progress: Callable[[str], None] | None = None,
                      force: bool = False) -> dict[str, Any]:
    """Measures inference tokens/Wh over a batch-size sweep, as `depth eval` does.

    Args:
        model: A model whose ``forward(idx)`` (B x T token ids) returns logits (B x T x V,
            B x 1 x V or B x V; alone, first in a tuple, or as ``.logits``). A ``forward``
            that takes ``past`` and returns ``(logits, ..., cache)`` decodes with its cache;
            any other recomputes the context each step. It is moved to `device` and `dtype`.
        generate: Instead of `model`: ``generate(prompt, new_tokens)`` producing exactly
            `new_tokens` per sequence (EOS ignored); needs `vocab_size`.
        source: The trained model the result belongs to (a checkpoint, ``runs:/``,
            ``models:/``, ``m-``): checked before measuring, attached after. A `model`
            whose parameter count differs from the count in the source's record is
            refused (``ValueError``) unless `force`; a `generate` callable (no weights to
            count) gets a ``UserWarning`` (also kept in the result's ``warnings``); so
            does an earlier eval the result replaces.
        meter: ``"auto"``, a meter name, or an `EnergyMeter` (closed when done).
        batch_sizes: Default 1, 4, 16, 64 (on a GPU x4 up to 1024, or the first that does
            not fit).
        dtype: ``fp32``, ``bf16`` or ``fp16`` (default bf16 on a GPU, fp32 on a CPU).
        vocab_size: Prompt ids are drawn below it (default: read from the logits).
        context_tokens: The model's longest context (default: ``block_size`` or the like on
            the model); longer prompts + new tokens are cropped to it.
        kv_cache: ``False`` recomputes the context even for a model with a cache.
        hardware: For the compute ceiling (``H100``, ``custom:TFLOPS:WATTS``...).
        flops_per_token: Inference FLOPs per token, for the compute ceiling.
        log: Log to the source's LoggedModel (with `source`); an unreachable tracking
            server is refused before measuring unless ``log=False``.
        force: Attach to `source` even a model whose parameter count differs from its
            record's (a warning then).
        Other arguments: as the `depth eval` options of the same names.

    Returns:
        The result of ``depth eval --json``: per batch size tokens/Wh, prefill and decode
        joules, spread; ``tokens_per_wh``, ``joules_per_token``, ``kv_cache``,
        ``physics``; with `source` also ``break_even_tokens``, ``written``,
        ``logged_model``.

    Raises:
        ValueError: One line: a bad argument, a source without a record or with another
            parameter count (without `force`), an unreachable tracking server (with `log`),
            a model whose forward gives no logits, or logits of the wrong shape or not
            finite, a generate callable that stops early.
    """
    if (model is None) == (generate is None):
        raise ValueError("give a model or generate=, not both")
    cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    config = EvalConfig(batch_sizes=list(batch_sizes or sweep_sizes(None, 1024 if cuda else 64)),
                        prompt_tokens=prompt_tokens, new_tokens=new_tokens,
                        dtype=dtype or ("bf16" if cuda else "fp32"), repeats=repeats,
                        min_window_s=min_window_s, idle_s=idle_s)
    target = resolve_target(source, tracking_uri, log) if source is not None else None
    tie = target and tie_warning(target, None, count_parameters(model), "the measured model",
                                 force)
    if tie:
        python_warning(tie)
    subject = model if generate is None else GenerateRunner(generate, kv_cache)
    result = measure_result(subject, config, device, meter, vocab_size=vocab_size,
                            hardware=hardware, temperature_k=temperature_k,
                            flops_per_token=flops_per_token, context_tokens=context_tokens,
                            kv_cache=kv_cache, progress=progress)
    named = model if generate is None else generate
    result["model"] = f"{type(named).__module__}.{type(named).__qualname__}" if (
        generate is None) else getattr(generate, "__qualname__", "generate callable")
    result["warnings"] = [tie] if tie else []
    return attach(result, target, log) if target is not None else result
