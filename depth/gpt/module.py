"""The LightningModule around `GPT`: AdamW, linear warm-up then cosine decay."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import pytorch_lightning as pl
import torch

from depth.gpt.model import GPT, GPTConfig


@dataclass
class OptimConfig:
    """The optimizer and its schedule.

    Attributes:
        lr: Peak learning rate.
        min_lr: Learning rate at the end of the cosine decay.
        warmup_steps: Optimizer steps of linear warm-up from 0.
        decay_steps: Optimizer steps until `min_lr` (usually the run's ``max_steps``).
        weight_decay: AdamW weight decay (on matrices only, not biases or norms).
        beta1: AdamW beta1.
        beta2: AdamW beta2.
    """

    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 20
    decay_steps: int = 300
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"optim.lr must be > 0; got {self.lr}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"optim.min_lr must be between 0 and optim.lr; got {self.min_lr}")
        if self.warmup_steps < 0 or self.decay_steps < 1:
            raise ValueError("optim.warmup_steps must be >= 0 and optim.decay_steps >= 1")

    def lr_at(self, step: int) -> float:
        """The learning rate at optimizer step `step`."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if step >= self.decay_steps:
            return self.min_lr
        span = max(1, self.decay_steps - self.warmup_steps)
        cosine = 0.5 * (1 + math.cos(math.pi * (step - self.warmup_steps) / span))
        return self.min_lr + cosine * (self.lr - self.min_lr)


class GPTModule(pl.LightningModule):
    """Trains a `GPT` on ``{"input_ids", "labels"}`` batches (B x T each).

    Args:
        model: The GPT's shape (a `GPTConfig` or its dict).
        optim: The optimizer (an `OptimConfig` or its dict).
    """

    def __init__(self, model: GPTConfig | dict[str, Any], optim: OptimConfig | dict[str, Any]):
        super().__init__()
        model = model if isinstance(model, GPTConfig) else GPTConfig(**model)
        optim = optim if isinstance(optim, OptimConfig) else OptimConfig(**optim)
        self.save_hyperparameters({"model": asdict(model), "optim": asdict(optim)})
        self.optim = optim
        self.gpt = GPT(model)

    @property
    def config(self) -> GPTConfig:
        return self.gpt.config

    def flops_per_token(self, training: bool = True) -> float:
        return self.gpt.flops_per_token(training)

    def forward(self, idx: torch.Tensor, past: Any = None) -> tuple[torch.Tensor, Any]:
        """Logits and the KV cache: the interface `depth eval` uses."""
        logits, _, cache = self.gpt(idx, past=past)
        return logits, cache

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        _, loss, _ = self.gpt(batch["input_ids"], batch["labels"])
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        _, loss, _ = self.gpt(batch["input_ids"], batch["labels"])
        self.log("val/loss", loss, prog_bar=True)

    def configure_optimizers(self) -> Any:
        decay = [p for p in self.parameters() if p.dim() >= 2]
        rest = [p for p in self.parameters() if p.dim() < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.optim.weight_decay},
             {"params": rest, "weight_decay": 0.0}],
            lr=self.optim.lr, betas=(self.optim.beta1, self.optim.beta2))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: self.optim.lr_at(step) / self.optim.lr)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
