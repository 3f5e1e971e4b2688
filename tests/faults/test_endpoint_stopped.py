"""A served model whose server dies part-way through `depth eval --endpoint`'s sweep: the
concurrency levels measured before are kept, attached and reported, with one warning line
saying where and why the sweep stopped (issue 14, a new user's trial)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytorch_lightning as pl

from depth import DepthCallback
from depth.cli.endpoint import print_endpoint
from depth.serving.endpoint import EndpointConfig
from depth.serving.endpoint_eval import evaluate_endpoint
from tests.doubles.meters import ClockMeter
from tests.support.lightning_models import TinyLM, loader
from tests.support.merged_cli import merged

pytest.importorskip("transformers", reason="the [serve] extra: transformers serve")


def test_a_server_dying_between_levels_keeps_the_levels_measured(tmp_path, capsys):
    from tests.support.openai_server import TransformersServer, tiny_gpt2

    trainer = pl.Trainer(callbacks=[DepthCallback(ClockMeter(), tracking=False)],
                         logger=False, max_epochs=1, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1,
                         default_root_dir=tmp_path)
    trainer.fit(TinyLM(), loader(n=16))
    ckpt = trainer.checkpoint_callback.best_model_path
    model = str(tiny_gpt2(tmp_path / "served"))
    server = TransformersServer(tmp_path / "server")
    server.start()
    status, text = merged("eval", "--endpoint", server.endpoint, "--model-name", model,
                          "--concurrency", "1", "--prompt-tokens", "16", "--new-tokens", "4",
                          "--repeats", "1", "--min-window-s", "0.2", "--idle-s", "0",
                          "--max-spread", "100", "--no-log")
    assert status == 0, text
    heading = text.index(f"depth eval: {model} served at {server.endpoint}  (")
    assert text.count(f"depth eval: {model} served at") == 1
    assert heading < text.index("  concurrency    1: ") < text.index("  best: 1 streams")
    warned: list[str] = []

    def progress(line: str) -> None:  # the first level is in: the server dies now
        server.stop()

    try:
        config = EndpointConfig(concurrency=[1, 2], prompt_tokens=16, new_tokens=4, repeats=2,
                                min_window_s=0.2, idle_s=0.2, max_spread=100,
                                request_timeout_s=30)
        result = evaluate_endpoint(server.endpoint, model, config, source=ckpt,
                                   progress=progress, warn=warned.append, log=False)
    finally:
        server.stop()
    assert [b["concurrency"] for b in result["batches"]] == [1]
    assert result["stopped"].startswith("concurrency 2:")
    assert result["tokens_per_wh"] == result["batches"][0]["tokens_per_wh"] > 0
    stopped = [w for w in warned if "sweep stopped part-way" in w]
    assert len(stopped) == 1 and "1 levels measured before it are kept" in stopped[0]
    saved = json.loads(Path(ckpt + ".depth-eval.json").read_text())
    assert [b["concurrency"] for b in saved["batches"]] == [1]  # attached: amortize uses it
    print_endpoint(result)
    table = capsys.readouterr().out
    assert "sweep stopped: concurrency 2:" in table and "loss: not measured" in table
