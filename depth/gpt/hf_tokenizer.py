"""depth's tokenizers as Hugging Face ``tokenizers`` files (``tokenizer.json`` and its
config), so that an exported model is loaded with ``AutoTokenizer``.

Both are byte-level BPE in GPT-2's layout: every byte is a vocabulary entry under GPT-2's
byte-to-character map. The byte tokenizer is that with no merges (id = byte value, no
pre-splitting); GPT-2's BPE is rebuilt from tiktoken's ranks, its merges recovered by
replaying BPE on each token with only the lower ranks allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

GPT2_EOS = "<|endoftext|>"


@lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's map of the 256 bytes onto printable characters (``bytes_to_unicode``)."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def _text(token: bytes) -> str:
    table = byte_to_unicode()
    return "".join(table[b] for b in token)


def _split(ranks: Mapping[bytes, int], token: bytes, below: int) -> list[bytes]:
    """`token` after BPE with only ranks below `below`: the pieces its last merge joins."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 1:
        best = min(((ranks.get(a + b, below), i) for i, (a, b) in
                    enumerate(zip(parts[:-1], parts[1:]))), default=(below, -1))
        if best[0] >= below:
            break
        i = best[1]
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return parts


def bpe_from_ranks(ranks: Mapping[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The vocabulary and merges (in rank order) of a tiktoken ranks table."""
    vocab = {_text(token): rank for token, rank in ranks.items()}
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) < 2:
            continue
        parts = _split(ranks, token, rank)
        if len(parts) != 2:
            raise ValueError(f"token {token!r} (rank {rank}) is not one merge of lower ranks")
        merges.append((_text(parts[0]), _text(parts[1])))
    return vocab, merges


def _fast_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]], split: bool,
                    eos: str | None) -> Any:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=split)
    tok.decoder = decoders.ByteLevel()
    special = {}
    if eos is not None:
        tok.add_special_tokens([AddedToken(eos, special=True)])
        special = {"bos_token": eos, "eos_token": eos, "unk_token": eos}
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=None, **special)


def byte_tokenizer() -> Any:
    """`depth.gpt.tokenizer.ByteTokenizer` as a ``PreTrainedTokenizerFast`` (id = byte)."""
    table = byte_to_unicode()
    return _fast_tokenizer({table[b]: b for b in range(256)}, [], split=False, eos=None)


def bpe_tokenizer(ranks: Mapping[bytes, int], eos_id: int | None = None) -> Any:
    """A tiktoken BPE (GPT-2's regex, its ranks) as a ``PreTrainedTokenizerFast``; `eos_id`
    is the id of ``<|endoftext|>`` (GPT-2: 50256, after the 50256 ranks)."""
    vocab, merges = bpe_from_ranks(ranks)
    tok = _fast_tokenizer(vocab, merges, split=True, eos=None)
    if eos_id is not None:
        if eos_id != len(vocab):
            raise ValueError(f"{GPT2_EOS} must follow the ranks (id {len(vocab)}); got {eos_id}")
        tok.add_special_tokens({"eos_token": GPT2_EOS, "bos_token": GPT2_EOS,
                                "unk_token": GPT2_EOS})
    return tok


def gpt2_ranks() -> tuple[dict[bytes, int], int]:
    """GPT-2's ranks and end-of-text id, from tiktoken (its table downloaded once)."""
    from depth.gpt.tokenizer import make_tokenizer

    enc = make_tokenizer("gpt2")._enc  # one-line errors when tiktoken or its table is missing
    return dict(enc._mergeable_ranks), enc.eot_token


def save_tokenizer(name: str, out: Path, block_size: int) -> None:
    """Writes tokenizer files for depth's tokenizer `name` (``bytes`` or ``gpt2``) to `out`."""
    if name == "bytes":
        tok = byte_tokenizer()
    elif name == "gpt2":
        ranks, eos_id = gpt2_ranks()
        tok = bpe_tokenizer(ranks, eos_id)
    else:
        raise ValueError(f"tokenizer must be bytes or gpt2; got {name!r}")
    tok.model_max_length = block_size
    tok.save_pretrained(str(out))
