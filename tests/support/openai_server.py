"""A real OpenAI-compatible server on 127.0.0.1 for tests: `transformers serve` (Hugging
Face's own server, nobody's code in this project) with tiny GPT-2 models built from a
config and a byte-level tokenizer made here, so nothing is downloaded."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.support.mlflow_server import free_port


def tiny_gpt2(out: Path, ends_at_once: bool = False, seed: int = 0) -> Path:
    """A 2-layer GPT-2 with a 257-token byte-level BPE (no merges: one token per byte).

    With `ends_at_once` its final layer norm is zeroed, so every logit is 0 and greedy
    decoding picks token 0, made its EOS: every answer ends after one token."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    eos = 0 if ends_at_once else None  # None: no EOS, every answer is max_tokens long
    special = "<|endoftext|>"
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=special,
                            bos_token=special).save_pretrained(out)
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(vocab), n_positions=256, n_embd=32, n_layer=2,
                        n_head=2, bos_token_id=eos, eos_token_id=eos)
    model = GPT2LMHeadModel(config)
    if ends_at_once:
        with torch.no_grad():
            model.transformer.ln_f.weight.zero_()
            model.transformer.ln_f.bias.zero_()
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = eos if eos is not None else len(vocab) - 1
    model.save_pretrained(out)
    return out


class TransformersServer:
    """`transformers serve` on a free port of 127.0.0.1, offline, on the CPU; it loads a
    model directory the first time a request names it.

    Attributes:
        endpoint: ``http://127.0.0.1:PORT/v1``.
        proc: The server process (it listens on the port itself).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}/v1"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 180.0) -> str:
        self.root.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(self.root / "hf-home"),
               "TOKENIZERS_PARALLELISM": "false"}
        log = open(self.root / "server.log", "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from transformers.cli.transformers import main; main()",
             "serve", "--host", "127.0.0.1", "--port", str(self.port), "--device", "cpu",
             "--log-level", "warning"],
            stdout=log, stderr=log, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health",
                                            timeout=1) as r:
                    if r.status == 200:
                        return self.endpoint
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("transformers serve did not start: "
                                   + (self.root / "server.log").read_text()[-2000:])
            time.sleep(0.25)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: only its processes
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
