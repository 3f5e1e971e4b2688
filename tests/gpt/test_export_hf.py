"""`depth export --format hf`: a depth recipe trained for real becomes a folder that
transformers loads by itself; its logits, tokens and tokenizer match depth's, and the folder
carries the model card and the record that `depth eval` attaches results to."""

from __future__ import annotations

import collections
import json

import pytest
import torch
import yaml
from mlflow import MlflowClient

from depth.cli import main
from depth.gpt.export_hf import gpt2_config, gpt2_state_dict
from depth.gpt.model import GPT, GPTConfig
from depth.gpt.recipe import load_recipe
from depth.gpt.tokenizer import ByteTokenizer
from depth.gpt.train import train
from depth.serving.models import load_model

transformers = pytest.importorskip("transformers")  # the [hf] extra; in .ci's [test] too

SMALL = ["--model.n_layer", "2", "--model.n_head", "2", "--model.n_embd", "32",
         "--model.block_size", "32", "--train.batch_size", "4", "--train.val_batches", "1",
         "--train.val_every_n_steps", "3", "--train.progress_bar", "false",
         "--data.stdlib_glob", "json/*.py", "--data.val_fraction", "0.2",
         "--train.max_steps", "3", "--tracking.experiment_name", "export"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    uri = f"sqlite:///{root}/mlflow.db"
    recipe = load_recipe("tiny-cpu", [*SMALL, "--tracking.tracking_uri", uri,
                                      "--data.cache_dir", str(root / "hf"),
                                      "--train.out_dir", str(root / "run")])
    result = train(recipe)
    out = root / "tiny-hf"
    assert main(["export", result.checkpoint, str(out)]) == 0
    return uri, result, out


def test_the_exported_model_computes_depths_logits_and_tokens(trained):
    _, result, out = trained
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md",
            "depth.json"} <= {p.name for p in out.iterdir()}
    ours = load_model(result.checkpoint, find_in_mlflow=False).module.eval()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    assert theirs.dtype == torch.float32
    idx = torch.randint(0, 256, (3, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(ours(idx)[0], theirs(idx).logits, atol=1e-4, rtol=0)
        prompt = idx[:, :8]
        depth_tokens = ours.gpt.generate(prompt, 16, temperature=0)
        hf_tokens = theirs.generate(prompt, attention_mask=torch.ones_like(prompt),
                                    max_new_tokens=16, do_sample=False, pad_token_id=0)
    assert torch.equal(depth_tokens, hf_tokens)


def test_the_tokenizer_is_depths_byte_tokenizer(trained):
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(trained[2]))
    text = "def f(x):\n    return 'héllo wörld' # €🙂 <|endoftext|>"
    assert tokenizer.encode(text) == ByteTokenizer().encode(text)
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_the_model_card_and_record_ride_along(trained, capsys):
    _, result, out = trained
    record = json.loads((out / "depth.json").read_text())
    assert record == result.record
    readme = (out / "README.md").read_text()
    meta = yaml.safe_load(readme.split("---\n")[1])
    assert meta["co2_eq_emissions"]["emissions"] == round(
        record["carbon"]["kg_co2eq"] * 1000, 6)
    assert meta["depth"]["train_joules"] == record["train_joules"]
    assert meta["depth"]["record_sha256"] == record["record_sha256"]
    assert main(["provenance", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["record_sha256"] == record["record_sha256"]


def test_eval_of_the_export_attaches_to_the_trained_model(trained, capsys):
    uri, result, out = trained
    status = main(["eval", str(out), "--batch-sizes", "1", "--prompt-tokens", "8",
                   "--new-tokens", "4", "--repeats", "1", "--remeasures", "0",
                   "--min-window-s", "0.02", "--idle-s", "0", "--json", "--tracking-uri", uri])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    evaluated = json.loads(captured.out)
    models = [m for m in MlflowClient(uri).search_logged_models(
        [MlflowClient(uri).get_experiment_by_name("export").experiment_id])
        if m.tags.get("depth.record_sha256") == result.record["record_sha256"]]
    assert [m.model_id for m in models] == [evaluated["logged_model"]]
    assert evaluated["break_even_tokens"] == pytest.approx(
        result.record["depth_joules"] / evaluated["joules_per_token"])
    status = main(["amortize", str(out), "--served-tokens", "1000", "--json", "--no-log"])
    amortized = json.loads(capsys.readouterr().out)
    assert status == 0 and amortized["inference_j_per_token"] == evaluated["joules_per_token"]


def test_a_recipe_without_biases_maps_exactly():
    torch.manual_seed(1)
    cfg = GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=16, bias=False)
    ours = GPT(cfg).eval()
    theirs = transformers.GPT2LMHeadModel(gpt2_config(cfg, None)).eval()
    theirs.load_state_dict(gpt2_state_dict(ours.state_dict(), theirs.state_dict()))
    idx = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        assert torch.allclose(ours(idx)[0], theirs(idx).logits, atol=1e-4, rtol=0)


PAT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def _train_bpe(text: str, merges: int) -> dict[bytes, int]:
    """A byte-level BPE in tiktoken's form (bytes -> rank), trained here on `text`."""
    import regex

    ranks = {bytes([b]): b for b in range(256)}
    words = [[bytes([b]) for b in w.encode()] for w in regex.findall(PAT, text)]
    for _ in range(merges):
        pairs = collections.Counter(p for w in words for p in zip(w, w[1:]))
        if not pairs:
            break
        (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        ranks[a + b] = len(ranks)
        merged = []
        for w in words:
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == (a, b):
                    out.append(a + b)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            merged.append(out)
        words = merged
    return ranks


def test_a_tiktoken_bpe_becomes_the_same_hf_tokenizer(tmp_path):
    """GPT-2's tokenizer is rebuilt from tiktoken's ranks; checked on a BPE trained here
    (GPT-2's own table is a download), against tiktoken itself."""
    import tiktoken

    from depth.gpt.hf_tokenizer import bpe_tokenizer

    text = open(tiktoken.__file__).read() + open(json.__file__).read()
    ranks = _train_bpe(text, 150)
    eos = len(ranks)
    enc = tiktoken.Encoding("test-bpe", pat_str=PAT, mergeable_ranks=ranks,
                            special_tokens={"<|endoftext|>": eos})
    bpe_tokenizer(ranks, eos).save_pretrained(str(tmp_path))
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    for sample in (text, "Hello  world's\n\n  x = 1  # héllo 🙂"):
        assert tokenizer.encode(sample) == enc.encode_ordinary(sample)
        assert tokenizer.decode(tokenizer.encode(sample)) == sample
    assert tokenizer.eos_token_id == eos
    assert tokenizer.encode("a<|endoftext|>b") == enc.encode("a<|endoftext|>b",
                                                            allowed_special="all")
