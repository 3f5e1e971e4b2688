"""Data through `datasets`: the offline default corpus, local files, the split, tokenizers."""

from __future__ import annotations

import numpy as np
import pytest

from depth.gpt.data import DataConfig, GPTDataModule, stdlib_files, tokenize
from depth.gpt.tokenizer import ByteTokenizer, make_tokenizer


def test_byte_tokenizer_round_trips_any_text():
    tok = ByteTokenizer()
    text = "énergie = ∫ P dt\n"
    assert tok.decode(tok.encode(text)) == text and max(tok.encode(text)) < 256


def test_the_default_corpus_is_the_standard_library_here_offline(tmp_path):
    files = stdlib_files("*.py")
    assert files and all("site-packages" not in f for f in files)
    assert any(f.endswith("/json/__init__.py") for f in stdlib_files("json/*.py"))
    config = DataConfig(stdlib_glob="json/*.py", cache_dir=str(tmp_path), val_fraction=0.2)
    train, val, vocab = tokenize(config)
    assert vocab == 256 and len(train) > 10_000 and len(val) > 100
    again_train, again_val, _ = tokenize(config)  # deterministic (and cached)
    assert np.array_equal(train, again_train) and np.array_equal(val, again_val)
    assert "JSON" in ByteTokenizer().decode(train[:20_000].tolist())


def test_local_text_files_and_the_datamodule(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(6):
        (corpus / f"doc{i}.txt").write_text(f"document {i}: " + "the quick brown fox " * 40)
    (corpus / "skip.bin").write_bytes(b"\x00\x01")
    data = GPTDataModule(DataConfig(source="files", path=str(corpus), val_fraction=0.2,
                                    cache_dir=str(tmp_path / "cache")),
                         block_size=16, batch_size=4)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch["input_ids"].shape == (4, 16) and batch["labels"].shape == (4, 16)
    assert batch["input_ids"].dtype.is_floating_point is False
    assert (batch["input_ids"][:, 1:] == batch["labels"][:, :-1]).all()  # next-token labels


def test_bad_data_options_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="data.path"):
        DataConfig(source="files")
    with pytest.raises(ValueError, match="data.val_fraction"):
        DataConfig(val_fraction=1.5)
    with pytest.raises(ValueError, match="no text files"):
        tokenize(DataConfig(source="files", path=str(tmp_path / "nothing-here")))
    with pytest.raises(ValueError, match="tokenizer must be one of"):
        make_tokenizer("sentencepiece")


def test_the_hub_path_reads_a_dataset_and_its_text_column(tmp_path):
    """``data.source: hub`` goes through ``load_dataset(name, config)``; a local dataset
    folder takes the same path offline (a hub name needs the internet)."""
    import json

    folder = tmp_path / "my-dataset"
    folder.mkdir()
    with open(folder / "train.jsonl", "w") as f:
        for i in range(8):
            f.write(json.dumps({"id": i, "body": f"story {i}: " + "once upon a time " * 20})
                    + "\n")
    config = DataConfig(source="hub", hub_name=str(folder), text_column="body",
                        val_fraction=0.25, cache_dir=str(tmp_path / "cache"))
    train, val, _ = tokenize(config)
    assert "once upon a time" in ByteTokenizer().decode(train[:200].tolist())
    with pytest.raises(ValueError, match="data.text_column 'text' is not a column"):
        tokenize(DataConfig(source="hub", hub_name=str(folder), cache_dir=str(tmp_path / "c")))
