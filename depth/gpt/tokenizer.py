"""Tokenizers: bytes (vocabulary 256, offline, the default) and GPT-2's BPE (tiktoken).

tiktoken downloads GPT-2's merge table on first use, so it needs the internet once (or a
``TIKTOKEN_CACHE_DIR`` that already holds it); the byte tokenizer needs nothing.
"""

from __future__ import annotations

from typing import Protocol

TOKENIZERS = ("bytes", "gpt2")


class Tokenizer(Protocol):
    name: str
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as tokens: any text, no vocabulary file, 256 ids."""

    name = "bytes"
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


class TiktokenTokenizer:
    """GPT-2's byte-pair encoding (50,257 ids) through tiktoken."""

    name = "gpt2"

    def __init__(self) -> None:
        try:
            import tiktoken
        except ImportError:
            raise ValueError("tokenizer 'gpt2' needs tiktoken: pip install tiktoken") from None
        try:
            self._enc = tiktoken.get_encoding("gpt2")
        except Exception as err:  # no network and no cached merge table
            raise ValueError(f"tokenizer 'gpt2' could not load GPT-2's BPE table ({err}); "
                             "it is downloaded once, or use tokenizer 'bytes'") from None
        self.vocab_size = self._enc.n_vocab

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def decode(self, ids: list[int]) -> str:
        return self._enc.decode(ids)


def make_tokenizer(name: str) -> Tokenizer:
    """The tokenizer called `name` (one of `TOKENIZERS`)."""
    if name == "bytes":
        return ByteTokenizer()
    if name == "gpt2":
        return TiktokenTokenizer()
    raise ValueError(f"tokenizer must be one of {', '.join(TOKENIZERS)}; got {name!r}")
