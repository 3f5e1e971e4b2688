"""A GPT in one readable file (after nanoGPT): config, model, KV cache, FLOPs per token.

Shapes: B batch, T sequence (time), C embedding width (``n_embd``), H heads, D = C / H
head width, V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class GPTConfig:
    """The shape of a GPT.

    Attributes:
        vocab_size: Tokens in the vocabulary (256 for the byte-level tokenizer, 50257 for
            GPT-2's BPE).
        block_size: Longest context, in tokens.
        n_layer: Transformer blocks.
        n_head: Attention heads per block.
        n_embd: Embedding width; a multiple of ``n_head``.
        dropout: Dropout probability in training.
        bias: Biases in the linear layers and LayerNorms (GPT-2 has them).
    """

    vocab_size: int = 256
    block_size: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int; got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head "
                             f"({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {self.dropout!r}")


KVCache = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: (k, v), each B x H x T x D


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # each B x T x C
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for t in (q, k, v))  # each B x H x T x D
        if past is not None:  # generation: attend to the cached keys and values too
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        dropout_p = self.dropout if self.training else 0.0
        if past is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)
        elif T == 1:  # one new token may see every cached position: no mask needed
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        else:  # several new tokens after a cache: causal among themselves, offset by it
            mask = torch.ones(T, k.size(2), dtype=torch.bool, device=x.device).tril(
                diagonal=k.size(2) - T)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # B x T x C
        return self.resid_dropout(self.c_proj(y)), (k, v)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        a, kv = self.attn(self.ln_1(x), past)
        x = x + a
        return x + self.mlp(self.ln_2(x)), kv


class GPT(nn.Module):
    """GPT-2-style decoder: learned positions, pre-LayerNorm blocks, tied input and output
    embeddings."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scaled init of residual projections
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameters (tied weights once); without the position embeddings by default, as
        the FLOPs-per-token rule counts them (Kaplan et al. 2020)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def flops_per_token(self, training: bool = True, context: int | None = None) -> float:
        """FLOPs per token, as nanoGPT and PaLM (appendix B) count them: for the weights 2N
        forward, 6N with the backward pass; for attention (scores QK^T and the weighted sum
        AV, 2 FLOPs per multiply-add) 4·L·C·T forward, 12·L·C·T in training, with T the
        context (default ``block_size``). Causal masking halves the attention work actually
        needed; like PaLM's MFU, this counts the full T."""
        cfg = self.config
        t = context or cfg.block_size
        forward = 2.0 * self.num_params() + 4.0 * cfg.n_layer * cfg.n_embd * t
        return 3.0 * forward if training else forward

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                past: KVCache | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None, KVCache]:
        """Logits (B x T x V), the mean cross-entropy against `targets` (or None), and the
        KV cache extended by `idx` (B x T token ids)."""
        B, T = idx.shape
        start = past[0][0].size(2) if past else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens is longer than block_size "
                             f"{self.config.block_size}")
        pos = torch.arange(start, start + T, device=idx.device)  # T
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        cache: KVCache = []
        for i, block in enumerate(self.transformer.h):
            x, kv = block(x, past[i] if past else None)
            cache.append(kv)
        logits = self.lm_head(self.transformer.ln_f(x))  # B x T x V
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss, cache

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
        """Appends `max_new_tokens` sampled tokens to `idx` (B x T), one forward pass of the
        prompt (prefill) and then one token per pass with the KV cache (decode)."""
        if idx.size(1) + max_new_tokens > self.config.block_size:
            raise ValueError(f"prompt ({idx.size(1)}) + new tokens ({max_new_tokens}) exceed "
                             f"block_size {self.config.block_size}")
        logits, _, cache = self(idx)
        out = [idx]
        for _ in range(max_new_tokens):
            nxt = self._sample(logits[:, -1, :], temperature, top_k, generator)  # B x 1
            out.append(nxt)
            logits, _, cache = self(nxt, past=cache)
        return torch.cat(out, dim=1)

    @staticmethod
    def _sample(logits: torch.Tensor, temperature: float, top_k: int | None,
                generator: torch.Generator | None) -> torch.Tensor:
        if temperature == 0:
            return logits.argmax(dim=-1, keepdim=True)
        logits = logits / temperature
        if top_k is not None:
            v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
            logits = logits.masked_fill(logits < v[:, [-1]], float("-inf"))
        return torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)

    def to_dict(self) -> dict:
        return asdict(self.config)
