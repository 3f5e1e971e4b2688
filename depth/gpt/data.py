"""Training text through `datasets`: local files, a hub dataset, or the offline default.

The default corpus needs neither a download nor a shipped file: it is the Python standard
library's own source files on this machine (``sysconfig.get_paths()["stdlib"]``, without
``site-packages``): several MB of real, varied English and code on every machine that runs
depth. Its exact content depends on the Python version, so its digest goes into the
record's config like any other input.
"""

from __future__ import annotations

import glob
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from depth.gpt.tokenizer import make_tokenizer

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py", ".json", ".jsonl", ".csv", ".html", ".tex")


@dataclass
class DataConfig:
    """Where the training text comes from and how it is cut into tokens.

    Attributes:
        source: ``stdlib`` (offline default: the Python standard library's sources on this
            machine), ``files`` (local text files: see `path`), or ``hub`` (a Hugging Face
            dataset: see `hub_name`; needs the internet).
        path: For ``files``: a text file, a folder (its text files, recursively) or a glob.
        stdlib_glob: For ``stdlib``: which files under the standard library folder.
        hub_name: For ``hub``: the dataset name, e.g. ``roneneldan/TinyStories``.
        hub_config: For ``hub``: its configuration, if it has several.
        text_column: The column that holds the text (``files`` and ``stdlib``: ``text``).
        tokenizer: ``bytes`` (256 ids, offline) or ``gpt2`` (BPE through tiktoken).
        val_fraction: Share of documents held out for validation (deterministic).
        seed: Seed of the split and of the shuffling of training windows.
        max_documents: Use at most this many documents (after a deterministic shuffle).
        cache_dir: Where `datasets` keeps its cache (default: its own, ~/.cache/huggingface).
    """

    source: Literal["stdlib", "files", "hub"] = "stdlib"
    path: str | None = None
    stdlib_glob: str = "*.py"
    hub_name: str | None = None
    hub_config: str | None = None
    text_column: str = "text"
    tokenizer: Literal["bytes", "gpt2"] = "bytes"
    val_fraction: float = 0.05
    seed: int = 1337
    max_documents: int | None = None
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be between 0 and 1; got {self.val_fraction}")
        if self.source == "files" and not self.path:
            raise ValueError("data.path is required with data.source=files (a file, folder "
                             "or glob)")
        if self.source == "hub" and not self.hub_name:
            raise ValueError("data.hub_name is required with data.source=hub")
        if self.max_documents is not None and self.max_documents < 2:
            raise ValueError(f"data.max_documents must be >= 2; got {self.max_documents}")


def stdlib_files(pattern: str = "*.py") -> list[str]:
    """The standard library's files matching `pattern`, sorted, without site-packages."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(str(f) for f in root.glob(pattern)
                  if f.is_file() and not {"site-packages", "dist-packages"} & set(f.parts))


def local_files(path: str) -> list[str]:
    """A file, a folder's text files (recursively), or a glob's matches; sorted."""
    p = Path(path).expanduser()
    if p.is_file():
        return [str(p)]
    if p.is_dir():
        return sorted(str(f) for f in p.rglob("*") if f.is_file() and f.suffix in TEXT_SUFFIXES)
    return sorted(f for f in glob.glob(str(p), recursive=True) if Path(f).is_file())


def load_documents(config: DataConfig) -> Any:
    """The corpus as a `datasets.Dataset` with a ``text`` column, one document per row."""
    import datasets

    if config.source == "hub":
        ds = datasets.load_dataset(config.hub_name, config.hub_config, split="train",
                                   cache_dir=config.cache_dir)
        if config.text_column not in ds.column_names:
            raise ValueError(f"data.text_column {config.text_column!r} is not a column of "
                             f"{config.hub_name}; it has {', '.join(ds.column_names)}")
        ds = ds.select_columns([config.text_column]).rename_column(config.text_column, "text") \
            if config.text_column != "text" else ds.select_columns(["text"])
    else:
        files = (stdlib_files(config.stdlib_glob) if config.source == "stdlib"
                 else local_files(config.path or ""))
        if not files:
            where = (f"the standard library ({config.stdlib_glob})" if config.source == "stdlib"
                     else config.path)
            raise ValueError(f"data: no text files found in {where}")
        ds = datasets.load_dataset("text", data_files=files, sample_by="document",
                                   split="train", cache_dir=config.cache_dir)
    if config.max_documents is not None and len(ds) > config.max_documents:
        ds = ds.shuffle(seed=config.seed).select(range(config.max_documents))
    if len(ds) < 2:
        raise ValueError("data: at least 2 documents are needed (one to hold out for "
                         f"validation); found {len(ds)}")
    return ds


def tokenize(config: DataConfig) -> tuple[np.ndarray, np.ndarray, int]:
    """(train tokens, validation tokens, vocabulary size): documents split
    deterministically, tokenized with a cached `map` (progress bar), concatenated."""
    tokenizer = make_tokenizer(config.tokenizer)
    ds = load_documents(config)
    split = ds.train_test_split(test_size=config.val_fraction, seed=config.seed)
    if len(split["test"]) == 0:  # very small corpora: hold out one document
        split = ds.train_test_split(test_size=1, seed=config.seed)

    def encode(batch: dict[str, list[str]]) -> dict[str, list[list[int]]]:
        return {"ids": [tokenizer.encode(text + "\n") for text in batch["text"]]}

    out = []
    for name in ("train", "test"):
        tokens = split[name].map(encode, batched=True, remove_columns=["text"],
                                 desc=f"tokenizing ({name})")
        tokens.set_format("numpy", columns=["ids"])
        arrays = [np.asarray(a, dtype=np.int32) for a in tokens["ids"]]
        out.append(np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int32))
    return out[0], out[1], tokenizer.vocab_size


class TokenWindows(Dataset):
    """Non-overlapping windows of ``block_size + 1`` tokens: inputs and next-token labels
    (each a T-long int64 tensor)."""

    def __init__(self, tokens: np.ndarray, block_size: int):
        self.tokens = torch.from_numpy(tokens.astype(np.int64))
        self.block_size = block_size
        self.n = (len(tokens) - 1) // block_size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        chunk = self.tokens[i * self.block_size:(i + 1) * self.block_size + 1]
        return {"input_ids": chunk[:-1], "labels": chunk[1:]}


class GPTDataModule(pl.LightningDataModule):
    """Token windows of the corpus in `config`: shuffled training batches (seeded),
    validation in order.

    Args:
        config: The corpus and tokenizer.
        block_size: Tokens per sequence.
        batch_size: Sequences per batch.
        num_workers: DataLoader workers.
    """

    def __init__(self, config: DataConfig, block_size: int, batch_size: int,
                 num_workers: int = 0):
        super().__init__()
        self.config, self.block_size, self.batch_size = config, block_size, batch_size
        self.num_workers = num_workers
        self.train_tokens: np.ndarray | None = None
        self.val_tokens: np.ndarray | None = None
        self.vocab_size: int | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_tokens is not None:
            return
        self.train_tokens, self.val_tokens, self.vocab_size = tokenize(self.config)
        for name, tokens in (("training", self.train_tokens), ("validation", self.val_tokens)):
            if len(tokens) <= self.block_size:
                raise ValueError(f"data: the {name} split has {len(tokens)} tokens, fewer than "
                                 f"one block of model.block_size={self.block_size}; use more "
                                 "documents or a smaller block_size")
        windows = (len(self.train_tokens) - 1) // self.block_size
        if windows < self.batch_size:
            raise ValueError(f"data: the training split makes {windows} sequences, fewer than "
                             f"one batch of train.batch_size={self.batch_size}")

    def train_dataloader(self) -> DataLoader:
        assert self.train_tokens is not None
        windows = TokenWindows(self.train_tokens, self.block_size)
        return DataLoader(windows, batch_size=self.batch_size, shuffle=True, drop_last=True,
                          generator=torch.Generator().manual_seed(self.config.seed),
                          num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        assert self.val_tokens is not None
        return DataLoader(TokenWindows(self.val_tokens, self.block_size),
                          batch_size=self.batch_size, num_workers=self.num_workers)
