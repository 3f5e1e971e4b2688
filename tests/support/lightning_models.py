"""Tiny real Lightning modules and data for callback tests."""

from __future__ import annotations

import torch
from pytorch_lightning import LightningModule
from torch.utils.data import DataLoader, Dataset

VOCAB = 32


class TokenData(Dataset):
    """`n` sequences of `seq_len` random token ids (integer B x T batches)."""

    def __init__(self, n: int = 64, seq_len: int = 8, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.data = torch.randint(0, VOCAB, (n, seq_len + 1), generator=g)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.data[i, :-1], "labels": self.data[i, 1:]}


class ByteData(Dataset):
    """`n` random byte sequences of 16 tokens as ``input_ids``/``labels`` (a depth GPT's
    batch), seeded."""

    def __init__(self, n: int = 16) -> None:
        self.data = torch.randint(0, 256, (n, 17), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.data[i, :-1], "labels": self.data[i, 1:]}


class TinyLM(LightningModule):
    """An embedding and a linear head: a language model in miniature."""

    def __init__(self, manual_every: int = 0, step_sleep_s: float = 0.0):
        super().__init__()
        self.emb = torch.nn.Embedding(VOCAB, 16)
        self.head = torch.nn.Linear(16, VOCAB)
        self.manual_every = manual_every
        self.step_sleep_s = step_sleep_s
        if manual_every:
            self.automatic_optimization = False

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = self.head(self.emb(batch["input_ids"]))
        return torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB),
                                                 batch["labels"].reshape(-1))

    def training_step(self, batch, batch_idx):
        if self.step_sleep_s:
            import time

            time.sleep(self.step_sleep_s)
        loss = self.loss(batch)
        if not self.manual_every:
            return loss
        opt = self.optimizers()
        self.manual_backward(loss)
        if (batch_idx + 1) % self.manual_every == 0:
            opt.step()
            opt.zero_grad()
        return None

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.loss(batch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader(n: int = 64, batch_size: int = 4, seq_len: int = 8) -> DataLoader:
    return DataLoader(TokenData(n, seq_len), batch_size=batch_size, num_workers=0)


def sqlite_mlflow_logger(tmp_path, experiment: str):
    """(tracking URI, MLFlowLogger) on a fresh SQLite store under `tmp_path`."""
    from pytorch_lightning.loggers import MLFlowLogger

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    return uri, MLFlowLogger(experiment_name=experiment, tracking_uri=uri,
                             artifact_location=str(tmp_path / "artifacts"))
