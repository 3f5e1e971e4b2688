"""`depth eval` on Hugging Face models nobody here wrote: a GPT-2 built by transformers from a
config and saved to a folder (nothing downloaded), loaded as a directory and through the
``hf:`` hub path (which takes a local folder offline, as the data tests' hub path does)."""

from __future__ import annotations

import json

import pytest
import torch

from depth.cli import main
from depth.serving.hf import HFCausalLM, load_hf

transformers = pytest.importorskip("transformers")  # the [hf] extra; in .ci's [test] too

FAST_EVAL = ["--batch-sizes", "1,2", "--prompt-tokens", "8", "--new-tokens", "6",
             "--repeats", "3", "--min-window-s", "0.02", "--idle-s", "0", "--json",
             "--meter", "estimate"]


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    """A tiny GPT-2 (random weights) saved as a transformers model folder."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=300, n_positions=64, n_embd=32, n_layer=2,
                                     n_head=2, eos_token_id=7, bos_token_id=7)
    path = tmp_path_factory.mktemp("hf") / "tiny-gpt2"
    transformers.GPT2LMHeadModel(config).save_pretrained(str(path))
    return path


def run_cli(capsys, *argv):
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_eval_of_a_model_folder_measures_it_with_its_own_shape(gpt2_dir, capsys):
    status, out, err = run_cli(capsys, "eval", str(gpt2_dir), *FAST_EVAL, "--no-log",
                               "--hardware", "custom:0.1:20:test-cpu")
    assert status == 0, err
    result = json.loads(out)
    assert [b["batch_size"] for b in result["batches"]] == [1, 2]
    assert [b["tokens"] for b in result["batches"]] == [6, 12]  # fixed new tokens
    assert result["tokens_per_wh"] > 0
    # 2N + 4·L·C·T, N without the position embedding (the tied head counted once)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(gpt2_dir))
    n = sum(p.numel() for p in model.parameters()) - 64 * 32
    assert result["physics"]["flops_per_token"] == 2 * n + 4 * 2 * 32 * 64
    # no depth.json beside it: no training side, said rather than invented
    assert result["train_joules"] is None and result["break_even_tokens"] is None
    assert result["written"] is None  # nothing to attach to: never beside the folder
    assert not (gpt2_dir.parent / "tiny-gpt2.depth-eval.json").exists()


def test_the_hub_path_loads_a_local_folder_and_writes_nothing_beside_it(gpt2_dir, capsys,
                                                                         tmp_path,
                                                                         monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, out, err = run_cli(capsys, "eval", f"hf:{gpt2_dir}", *FAST_EVAL, "--no-log",
                               "--batch-sizes", "1", "--repeats", "1", "--remeasures", "0")
    assert status == 0, err
    assert json.loads(out)["source"] == f"hf:{gpt2_dir}"
    assert list(tmp_path.iterdir()) == []  # a hub id is no path to write beside


def test_the_measured_loop_is_greedy_generate_with_eos_ignored(gpt2_dir):
    """The adapter's decode is what ``generate`` computes greedily; EOS does not stop it."""
    adapter = load_hf(str(gpt2_dir)).eval()
    prompt = torch.randint(0, 300, (2, 8), generator=torch.Generator().manual_seed(1))
    ours = adapter.greedy(prompt, 12)
    theirs = adapter.hf.generate(prompt, attention_mask=torch.ones_like(prompt),
                                 max_new_tokens=12, do_sample=False, eos_token_id=None,
                                 pad_token_id=0)[:, 8:]
    assert torch.equal(ours, theirs)
    adapter.hf.generation_config.eos_token_id = int(ours[0, 0])  # EOS first: still 12
    assert adapter.greedy(prompt, 12).shape == (2, 12)


def test_each_decode_window_starts_from_the_same_prefilled_cache(gpt2_dir):
    """`measure` repeats decode from one prefilled cache; a cache extended in place would
    make every repeat after the first decode a longer context (other tokens, more work)."""
    adapter = HFCausalLM(transformers.AutoModelForCausalLM.from_pretrained(str(gpt2_dir)))
    adapter.eval()
    prompt = torch.randint(0, 300, (1, 8), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        _, prefilled = adapter(prompt)

        def decode() -> list[int]:
            cache, nxt, out = prefilled, prompt[:, -1:], []
            for _ in range(6):
                logits, cache = adapter(nxt, past=cache)
                nxt = logits[:, -1].argmax(-1, keepdim=True)
                out.append(int(nxt))
            return out, cache.get_seq_length()

        first, second = decode(), decode()
    assert first == second and first[1] == 8 + 6
