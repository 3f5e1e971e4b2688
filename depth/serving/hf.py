"""Hugging Face causal language models for `depth eval`: a local directory with
``config.json`` or ``hf:NAME`` (a hub id, or a local directory through the same code path).

The model is loaded with ``AutoModelForCausalLM`` and measured by depth's own sweep
(`depth.serving.inference.measure`) through `HFCausalLM`, an adapter that runs the model's
forward pass with its own KV cache (``past_key_values``, ``use_cache=True``) exactly as
``generate`` does for greedy decoding: the prompt once (prefill, last position's logits
only), then one token per pass (decode), a fixed number of new tokens, EOS ignored. Why
not time ``generate`` itself: one ``generate`` call mixes prefill and decode in one window,
and a decode-only window needs a prefilled cache per repeat; the adapter keeps the two
windows apart like for every other model, and a test checks its tokens against
``generate``'s. Each decode window starts from a copy of the prefilled cache (a cache
object is extended in place), which the window pays for: one copy of the prompt's keys and
values against ``new_tokens`` passes that each read them.

``transformers`` is an optional extra (``pip install 'depth[hf]'``): imported only here,
inside functions.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

HUB_PREFIX = "hf:"


def is_hf_source(source: str) -> bool:
    """True for ``hf:NAME`` and for a directory holding a ``config.json``."""
    return source.startswith(HUB_PREFIX) or (Path(source) / "config.json").is_file()


@dataclass
class HFShape:
    """What `measure` and the compute ceiling need from a model's configuration."""

    vocab_size: int
    block_size: int | None  # longest context; None when the configuration does not say
    n_layer: int
    n_embd: int


class _Prefilled:
    """A prefilled cache: each decode started from it extends a copy, never it."""

    def __init__(self, cache: Any):
        self.cache = cache


class HFCausalLM(nn.Module):
    """``forward(idx, past=None) -> (logits, cache)`` over a transformers causal LM.

    Args:
        model: An ``AutoModelForCausalLM`` model.
    """

    def __init__(self, model: Any):
        super().__init__()
        self.hf = model
        cfg = model.config
        self.config = HFShape(
            vocab_size=int(cfg.vocab_size),
            block_size=getattr(cfg, "max_position_embeddings", None),
            n_layer=int(getattr(cfg, "num_hidden_layers", 0) or 0),
            n_embd=int(getattr(cfg, "hidden_size", 0) or 0))
        # generate computes the prompt's logits at its last position only; so do we
        self._keep = "logits_to_keep" in inspect.signature(model.forward).parameters

    def forward(self, idx: torch.Tensor, past: Any = None) -> tuple[torch.Tensor, Any]:
        """Logits (B x T' x V; T' = 1 for a prompt when the model can skip the rest) and
        the cache extended by `idx`."""
        if past is None:
            extra = {"logits_to_keep": 1} if self._keep else {}
            out = self.hf(input_ids=idx, use_cache=True, **extra)
            return out.logits, _Prefilled(out.past_key_values)
        cache = copy.deepcopy(past.cache) if isinstance(past, _Prefilled) else past
        out = self.hf(input_ids=idx, past_key_values=cache, use_cache=True)
        return out.logits, out.past_key_values

    def num_params(self) -> int:
        """Parameters the FLOPs-per-token rule counts: all but the embeddings, plus the
        output projection once (tied to the token embedding or not)."""
        unique = {id(p): p for p in self.hf.parameters()}
        embeddings = {id(p) for m in self.hf.modules() if isinstance(m, nn.Embedding)
                      for p in m.parameters()}
        n = sum(p.numel() for i, p in unique.items() if i not in embeddings)
        head = self.hf.get_output_embeddings()
        if head is not None and id(head.weight) in embeddings:  # tied: still a matmul
            n += head.weight.numel()
        return n

    def flops_per_token(self, training: bool = False) -> float | None:
        """2N + 4·L·C·T forward (T the longest context), as `depth.gpt.model.GPT` counts;
        ``None`` when the configuration does not give layers, width and context."""
        shape = self.config
        if not (shape.n_layer and shape.n_embd and shape.block_size):
            return None
        forward = 2.0 * self.num_params() + 4.0 * shape.n_layer * shape.n_embd * shape.block_size
        return 3.0 * forward if training else forward

    @torch.no_grad()
    def greedy(self, idx: torch.Tensor, new_tokens: int) -> torch.Tensor:
        """`new_tokens` greedy tokens after `idx` through this adapter (B x new_tokens): what
        the measured decode windows compute."""
        logits, cache = self(idx)
        out = []
        for _ in range(new_tokens):
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            out.append(nxt)
            logits, cache = self(nxt, past=cache)
        return torch.cat(out, dim=1)


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ValueError("Hugging Face models need transformers: pip install 'depth[hf]' "
                         "(or pip install transformers safetensors)") from None
    transformers.utils.logging.disable_progress_bar()  # stderr keeps depth's own lines
    return transformers


def load_hf(source: str, trust: bool = False) -> HFCausalLM:
    """The causal LM at `source` (a directory with ``config.json``, or ``hf:NAME``).

    Args:
        source: The directory, or ``hf:`` and a hub id (or a local directory).
        trust: Let a hub model run its own Python code (``trust_remote_code``).

    Raises:
        ValueError: One line: transformers missing, a hub id that cannot be fetched (offline),
            or a model that is not a causal language model.
    """
    transformers = _transformers()
    name = source.removeprefix(HUB_PREFIX)
    if not name:
        raise ValueError("hf: needs a model id or directory, e.g. hf:openai-community/gpt2")
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            name, trust_remote_code=trust)
    except (OSError, ValueError, KeyError) as err:
        from_hub = source.startswith(HUB_PREFIX) and not Path(name).is_dir()
        if from_hub and isinstance(err, OSError) and _offline():
            raise ValueError(f"{source}: HF_HUB_OFFLINE is set and {name} is not in the "
                             "local Hugging Face cache: give a local directory with "
                             "config.json instead (one that save_pretrained or `depth export` "
                             "wrote), or fetch it once while online") from None
        text = " ".join(str(err).split())[:200]
        hint = "; offline, give a local directory with config.json" if from_hub else ""
        raise ValueError(f"{source}: cannot load it as a causal language model "
                         f"({type(err).__name__}: {text}){hint}") from None
    return HFCausalLM(model)


def _offline() -> bool:
    """Whether the Hugging Face hub is switched off (``HF_HUB_OFFLINE``), as
    huggingface_hub read it when imported."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(constants.HF_HUB_OFFLINE)


def hf_record(source: str) -> dict[str, Any] | None:
    """The depth record of a directory `depth export` wrote (its ``depth.json``), or
    ``None`` (a hub model, or a directory from elsewhere)."""
    from depth.tracking.sources import exported_record

    return exported_record(source.removeprefix(HUB_PREFIX))
