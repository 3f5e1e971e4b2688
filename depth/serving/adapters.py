"""How `depth.serving.inference.measure` drives a model: greedy generation through the
model's own interface, with its KV cache when it offers one.

A *runner* turns one model into two timed pieces, ``prefill(prompt) -> state`` and
``decode(state, new_tokens)``, or, for a bare ``generate`` callable, one piece
``generate(prompt, new_tokens)``:

- `CachedRunner`: the model's ``forward`` takes a keyword ``past`` (the KV-cache protocol):
  ``forward(idx, past=None)`` returns a tuple whose first element is the logits and whose
  last is the cache to pass back (``None`` past: a fresh prompt). One token per decode step.
- `RecomputeRunner`: any other ``forward(idx)``; each decode step recomputes the whole
  (cropped) context, as nanoGPT's ``generate`` does (``kv_cache: false`` in the result).
- `GenerateRunner`: a ``generate(prompt, new_tokens)`` callable the user brings (a custom
  loop, Hugging Face's ``model.generate``); prefill and decode cannot be told apart.

Logits may come as B x T x V, B x 1 x V or B x V, as a tuple whose first element they are,
or as an object with ``.logits``. The model never sees more than its context
(`context_tokens`): prompts are cropped to their last tokens, and a full KV cache is rebuilt
from the last half context.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch

CONTEXT_NAMES = ("block_size", "n_positions", "max_position_embeddings", "context_length",
                 "max_seq_len")


def logits_of(out: Any) -> torch.Tensor:
    """The last position's logits (B x V) from whatever a forward pass returned.

    Raises:
        ValueError: No logits tensor in `out` (one line naming what was found).
    """
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    elif not isinstance(out, torch.Tensor) and hasattr(out, "logits"):
        out = out.logits
    if not isinstance(out, torch.Tensor) or out.dim() not in (2, 3):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"the model's forward(idx) returned {shape}; depth needs logits "
                         "B x T x V or B x V, alone, first in a tuple, or as .logits")
    return out[:, -1] if out.dim() == 3 else out


def check_logits(out: Any, batch: int, tokens: int) -> None:
    """Refuses what a first forward pass on a `batch` x `tokens` prompt returned when its
    logits cannot be right: another batch size, the vocabulary not last (B x V x T), or
    NaN/inf values. Measured, such a model gives figures that mean nothing.

    Raises:
        ValueError: One line saying what is wrong with the logits.
    """
    logits_of(out)  # no logits at all: its own line
    if isinstance(out, (tuple, list)):
        out = out[0]
    elif not isinstance(out, torch.Tensor):
        out = out.logits
    said = f"the model's forward(idx) returned logits of shape {tuple(out.shape)}"
    if out.size(0) != batch:
        raise ValueError(f"{said}: logits for {out.size(0)} sequences of a batch of {batch}; "
                         "depth needs B x T x V, B x 1 x V or B x V")
    if out.dim() == 3 and out.size(-2) not in (tokens, 1):
        raise ValueError(f"{said} for a {batch} x {tokens} prompt; depth needs B x T x V or "
                         "B x 1 x V, the vocabulary last (B x V x T? transpose it)")
    bad = [name for name, found in (("NaN", torch.isnan(out).any()),
                                    ("inf", torch.isinf(out).any())) if found]
    if bad:
        raise ValueError(f"{said} with {' and '.join(bad)} values; a model whose logits are "
                         "not finite gives no meaningful tokens/Wh (diverged, or a broken "
                         "dtype?)")


def _context_in(obj: Any) -> int | None:
    for name in CONTEXT_NAMES:
        value = obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def context_tokens(model: Any) -> int | None:
    """The longest context the model takes: ``block_size`` (or ``n_positions``, ...) on
    the model, its ``config`` or ``hparams``, or the ``config`` of a module inside it;
    ``None`` when the model does not say."""
    for obj in (model, getattr(model, "config", None), getattr(model, "hparams", None)):
        if obj is not None and (found := _context_in(obj)) is not None:
            return found
    modules = model.modules() if isinstance(model, torch.nn.Module) else []
    for module in modules:
        if (config := getattr(module, "config", None)) is not None:
            if (found := _context_in(config)) is not None:
                return found
    return None


def offers_kv_cache(model: Any) -> bool:
    """Whether ``model.forward`` takes the keyword ``past`` (the KV-cache protocol)."""
    forward = getattr(model, "forward", model)
    try:
        return "past" in inspect.signature(forward).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        return False


class Runner:
    """What `measure` drives. With `splits`, it calls ``start(prompt) -> state`` untimed,
    then times ``prefill(prompt)`` and ``decode(state, new_tokens)`` apart; without, it
    times ``generate(prompt, new_tokens)``. Other loaders (a Hugging Face model, ...) plug
    in by subclassing it."""

    kv_cache: bool | None = None  # reported as is: True, False, or None (unknown)
    splits = False
    context: int | None = None  # the longest context the model sees, when known


class RecomputeRunner(Runner):
    """Greedy generation through ``forward(idx)`` alone: every step runs the whole context
    again (cropped to the model's)."""

    kv_cache: bool | None = False
    splits = True  # prefill and decode are measured apart

    def __init__(self, model: Any, context: int | None):
        self.model, self.context = model, context

    def crop(self, idx: torch.Tensor) -> torch.Tensor:
        return idx if self.context is None else idx[:, -self.context:]

    def prefill(self, prompt: torch.Tensor) -> torch.Tensor:
        """The prompt's forward pass; the last position's logits (B x V)."""
        return logits_of(self.model(self.crop(prompt)))

    def forward(self, prompt: torch.Tensor) -> Any:
        """What the model's forward returns for a fresh prompt, as it is."""
        return self.model(self.crop(prompt))

    def check(self, prompt: torch.Tensor) -> None:
        """Refuses logits that cannot be right (see `check_logits`), before measuring.

        Raises:
            ValueError: One line: the model fails on `prompt`, or its logits are wrong.
        """
        tokens = self.crop(prompt).size(1)
        try:
            out = self.forward(prompt)
        except ValueError:
            raise
        except Exception as err:  # the user's code: anything can go wrong in it
            text = " ".join(str(err).split())[:200]
            raise ValueError(f"the model's forward(idx) failed on a {prompt.size(0)} x "
                             f"{tokens} prompt of token ids ({type(err).__name__}: {text})"
                             ) from None
        check_logits(out, prompt.size(0), tokens)

    def vocab_size(self, device: torch.device) -> int:
        """The vocabulary, read from the logits of a one-token prompt.

        Raises:
            ValueError: The model's forward fails on it, or returns no logits (one line).
        """
        try:
            return int(self.prefill(torch.zeros(1, 1, dtype=torch.long, device=device)
                                    ).size(-1))
        except ValueError:
            raise
        except Exception as err:  # the user's code: anything can go wrong in it
            text = " ".join(str(err).split())[:200]
            raise ValueError(f"the model's forward(idx) failed on a 1 x 1 prompt of token "
                             f"ids ({type(err).__name__}: {text})") from None

    def start(self, prompt: torch.Tensor) -> Any:
        """The state every decode window starts from (untimed)."""
        nxt = self.prefill(prompt).argmax(-1, keepdim=True)
        return torch.cat([prompt, nxt], dim=1)

    def decode(self, state: Any, new_tokens: int) -> None:
        idx = state
        for _ in range(new_tokens):
            nxt = logits_of(self.model(self.crop(idx))).argmax(-1, keepdim=True)
            idx = torch.cat([idx, nxt], dim=1)


class CachedRunner(RecomputeRunner):
    """Greedy generation with the model's KV cache: ``forward(idx, past=cache)``."""

    kv_cache = True

    def _step(self, idx: torch.Tensor, past: Any) -> tuple[torch.Tensor, Any]:
        out = self.model(idx, past=past)
        if not isinstance(out, (tuple, list)) or len(out) < 2:
            raise ValueError("the model's forward takes `past` but did not return "
                             "(logits, ..., cache): see the KV-cache protocol")
        return logits_of(out), out[-1]

    def prefill(self, prompt: torch.Tensor) -> torch.Tensor:
        return self._step(self.crop(prompt), None)[0]

    def forward(self, prompt: torch.Tensor) -> Any:
        out = self.model(self.crop(prompt), past=None)
        if not isinstance(out, (tuple, list)) or len(out) < 2:
            raise ValueError("the model's forward takes `past` but did not return "
                             "(logits, ..., cache): see the KV-cache protocol")
        return out[0]

    def start(self, prompt: torch.Tensor) -> Any:
        prompt = self.crop(prompt)
        _, cache = self._step(prompt, None)
        return prompt, cache

    def decode(self, state: Any, new_tokens: int) -> None:
        idx, cache = state
        length = idx.size(1)
        nxt = idx[:, -1:]
        for _ in range(new_tokens):
            if self.context is not None and length >= self.context:
                keep = max(1, self.context // 2)  # full: rebuild the cache from a half context
                logits, cache = self._step(idx[:, -keep:], None)
                length = keep
            else:
                logits, cache = self._step(nxt, cache)
                length += 1
            nxt = logits.argmax(-1, keepdim=True)
            idx = torch.cat([idx, nxt], dim=1)


class GenerateRunner(Runner):
    """A ``generate(prompt, new_tokens)`` callable: one window per generation."""

    def __init__(self, generate: Callable[[torch.Tensor, int], Any],
                 kv_cache: bool | None = None):
        self.fn, self.kv_cache = generate, kv_cache

    def generate(self, prompt: torch.Tensor, new_tokens: int) -> None:
        out = self.fn(prompt, new_tokens)
        out = getattr(out, "sequences", out)  # Hugging Face's GenerateOutput
        if isinstance(out, torch.Tensor) and out.dim() == 2:  # the prompt and/or new ids
            t = prompt.size(1)
            echoed = out.size(1) >= t and torch.equal(out[:, :t].to(prompt.device), prompt)
            got = out.size(1) - (t if echoed else 0)
            if got != new_tokens:
                raise ValueError(f"generate returned {out.size(1)} tokens per sequence for a "
                                 f"{prompt.size(1)}-token prompt and {new_tokens} new tokens; "
                                 "depth counts exactly new_tokens: make it ignore EOS (e.g. "
                                 "min_new_tokens=max_new_tokens)")


def runner_for(model: Any = None, generate: Callable[[torch.Tensor, int], Any] | None = None,
               context: int | None = None, kv_cache: bool | None = None) -> Runner:
    """The runner for a model (its cache used when it offers one, unless `kv_cache` is
    ``False``) or for a `generate` callable; `context` overrides the model's own."""
    if (model is None) == (generate is None):
        raise ValueError("give a model or a generate callable, not both")
    if generate is not None:
        return GenerateRunner(generate, kv_cache)
    context = context or context_tokens(model)
    if kv_cache is True and not offers_kv_cache(model):
        raise ValueError("kv_cache=True, but the model's forward takes no `past` keyword "
                         "(the KV-cache protocol)")
    if offers_kv_cache(model) and kv_cache is not False:
        return CachedRunner(model, context)
    return RecomputeRunner(model, context)
