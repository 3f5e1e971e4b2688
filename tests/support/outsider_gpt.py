"""A user's own GPT, written the way karpathy's nanoGPT ``model.py`` is, in a LightningModule
(importable as ``tests.support.outsider_gpt:LitNanoGPT``).

Nothing here is depth's: no KV cache, ``forward(idx, targets=None)`` returns
``(logits, loss)`` with logits for the last position only (B x 1 x V) when there are no
targets, and a sequence longer than ``block_size`` is an assertion error, as in nanoGPT.
depth must measure it through that interface alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytorch_lightning as pl
import torch
import torch.nn as nn
from torch.nn import functional as F


@dataclass
class GPTConfig:
    block_size: int = 32
    vocab_size: int = 256
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 32
    dropout: float = 0.0
    bias: bool = True


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.n_head, self.n_embd = config.n_head, config.n_embd
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd)))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, t = idx.size()
        assert t <= self.config.block_size, (
            f"Cannot forward sequence of length {t}, block size is only "
            f"{self.config.block_size}")
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        if targets is not None:
            logits = self.lm_head(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1),
                                   ignore_index=-1)
        else:  # inference-time mini-optimization: only forward the lm_head on the last position
            logits = self.lm_head(x[:, [-1], :])
            loss = None
        return logits, loss


class LitNanoGPT(pl.LightningModule):
    """The user's training wrapper: hyperparameters saved, so ``load_from_checkpoint`` can
    rebuild it."""

    def __init__(self, block_size: int = 32, vocab_size: int = 256, n_layer: int = 2,
                 n_head: int = 2, n_embd: int = 32, lr: float = 3e-3):
        super().__init__()
        self.save_hyperparameters()
        self.model = GPT(GPTConfig(block_size=block_size, vocab_size=vocab_size,
                                   n_layer=n_layer, n_head=n_head, n_embd=n_embd))

    def forward(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.model(idx)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        _, loss = self.model(batch["input_ids"], batch["labels"])
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)


class TokenWindows(torch.utils.data.Dataset):
    """Next-token pairs cut from a byte string (the user's own data pipeline)."""

    def __init__(self, text: bytes, block_size: int):
        self.data = torch.tensor(list(text), dtype=torch.long)
        self.block_size = block_size

    def __len__(self) -> int:
        return max(1, (len(self.data) - 1) // self.block_size)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        chunk = self.data[i * self.block_size: (i + 1) * self.block_size + 1]
        return {"input_ids": chunk[:-1], "labels": chunk[1:]}


def train_with_depth(root, steps: int = 4, experiment: str = "outsiders"
                     ) -> tuple[str, list[str], str]:
    """Trains `LitNanoGPT` as a user would: a Trainer, the user's data, DepthCallback, an
    MLflow logger on a SQLite store in `root`, a checkpoint every 2 steps.

    Returns:
        (tracking URI, checkpoint paths by step, MLflow run id).
    """
    import json
    from pathlib import Path

    from pytorch_lightning.callbacks import ModelCheckpoint

    from depth import DepthCallback
    from tests.doubles.meters import ClockMeter
    from tests.support.lightning_models import sqlite_mlflow_logger

    uri, logger = sqlite_mlflow_logger(root, experiment)
    text = Path(json.__file__).read_bytes()[:6000]
    loader = torch.utils.data.DataLoader(TokenWindows(text, 16), batch_size=4)
    trainer = pl.Trainer(
        max_steps=steps, logger=logger, default_root_dir=root, accelerator="cpu", devices=1,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        callbacks=[DepthCallback(ClockMeter({"gpu:0": 40.0}), experiment_name=experiment),
                   ModelCheckpoint(dirpath=Path(root) / "ckpt", every_n_train_steps=2,
                                   save_top_k=-1)])
    trainer.fit(LitNanoGPT(block_size=16, n_layer=1, n_head=2, n_embd=32), loader)
    checkpoints = sorted((Path(root) / "ckpt").glob("*.ckpt"),
                         key=lambda p: int(p.stem.split("step=")[1]))
    return uri, [str(p) for p in checkpoints], logger.run_id
