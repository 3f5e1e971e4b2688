"""Training throughput and MFU of a recipe: tokens/s, model FLOP utilization, tokens/Wh.

Usage:
    python scripts/bench_train.py [--recipe tiny-cpu] [--steps N] [--json OUT.json]
                                  [--peak-tflops X] [-- RECIPE OVERRIDES ...]

Trains the recipe once (MLflow off: the numbers must not include a store's cost), timing
every training batch with CUDA synchronized at both ends of the timed window (not
inside it). Reported:

- median step time over the steps after the first 10 (warm-up), and tokens/s from it;
- tokens/s over the whole fit (validation and set-up included);
- model FLOPs per token (`GPT.flops_per_token`: 6N + 12·L·C·T) and achieved FLOP/s;
- MFU = achieved / peak. Peak: ``--peak-tflops`` if given; on a GPU, the dense BF16 (or
  FP32 for fp32 recipes) figure of a known board from the hardware table below; on a CPU,
  the *measured* best FP32 matmul rate of this machine with torch (labelled as such: a
  CPU has no datasheet figure that torch can reach);
- the recipe's training tokens per Wh and its energy method, from the checkpoint record.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402

from depth.gpt.recipe import load_recipe  # noqa: E402
from depth.gpt.train import train  # noqa: E402

# Dense peak TFLOP/s (BF16, FP32 without tensor cores) by board name: the design notes' table.
GPU_PEAK_TFLOPS = {"H100": (989.0, 67.0), "H200": (989.0, 67.0), "A100": (312.0, 19.5),
                   "RTX 4090": (165.0, 82.6), "RTX 3090": (71.0, 35.6)}


class StepTimer(pl.Callback):
    """Seconds of every training batch (start of batch to end of batch)."""

    def __init__(self) -> None:
        self.steps_s: list[float] = []
        self._t0 = 0.0

    def _sync(self, trainer: pl.Trainer) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._sync(trainer)
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._sync(trainer)
        self.steps_s.append(time.perf_counter() - self._t0)


def synthetic_data(recipe: Any) -> pl.LightningDataModule:
    """Seeded random token windows shaped like the recipe's batches."""
    from torch.utils.data import DataLoader, Dataset

    block, vocab = recipe.model.block_size, min(recipe.model.vocab_size, 256)

    class Windows(Dataset):
        def __init__(self, n: int, seed: int) -> None:
            g = torch.Generator().manual_seed(seed)
            self.data = torch.randint(0, vocab, (n, block + 1), generator=g)

        def __len__(self) -> int:
            return len(self.data)

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {"input_ids": self.data[i, :-1], "labels": self.data[i, 1:]}

    batch = recipe.train.batch_size
    n_train = batch * (recipe.train.max_steps * recipe.train.accumulate_grad_batches + 1)

    class Data(pl.LightningDataModule):
        def train_dataloader(self) -> DataLoader:
            return DataLoader(Windows(n_train, 0), batch_size=batch, shuffle=True,
                              drop_last=True)

        def val_dataloader(self) -> DataLoader:
            return DataLoader(Windows(batch * recipe.train.val_batches, 1), batch_size=batch)

    return Data()


def cpu_matmul_peak_flops(n: int = 1024, repeats: int = 20) -> float:
    """The best FP32 matmul rate torch reaches here (FLOP/s), over `repeats` timings."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t0))
    return best


def peak(recipe: Any, given_tflops: float | None) -> tuple[float, str]:
    if given_tflops:
        return given_tflops * 1e12, "given with --peak-tflops"
    if recipe.train.accelerator != "cpu" and torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for key, (bf16, fp32) in GPU_PEAK_TFLOPS.items():
            if key in name:
                low = "bf16" in recipe.train.precision or "16" in recipe.train.precision
                return ((bf16 if low else fp32) * 1e12,
                        f"{key} dense {'BF16' if low else 'FP32'} datasheet peak")
        raise SystemExit(f"unknown GPU {name!r}: pass --peak-tflops")
    flops = cpu_matmul_peak_flops()
    return flops, (f"measured best FP32 1024x1024 matmul on this CPU, torch "
                   f"{torch.get_num_threads()} threads (not a datasheet peak)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--synthetic-data", action="store_true",
                        help="Random tokens instead of the recipe's corpus (no `datasets` "
                        "needed, as on the GPU image); throughput and energy do not depend "
                        "on which tokens, the loss does.")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    name = args.recipe or ("gpt2-small" if torch.cuda.is_available() else "tiny-cpu")
    overrides = ["--tracking.enabled", "false", "--train.progress_bar", "false",
                 *(["--train.max_steps", str(args.steps)] if args.steps else []),
                 *args.overrides]
    recipe = load_recipe(name, overrides)
    with tempfile.TemporaryDirectory() as tmp:
        recipe.train.out_dir = str(Path(tmp) / "out")
        timer = StepTimer()
        data = synthetic_data(recipe) if args.synthetic_data else None
        result = train(recipe, callbacks=[timer], datamodule=data)
    tokens_per_step = (recipe.train.batch_size * recipe.model.block_size
                       * recipe.train.accumulate_grad_batches)
    steady = timer.steps_s[10:] or timer.steps_s
    step_s = statistics.median(steady) * recipe.train.accumulate_grad_batches
    tokens_per_s = tokens_per_step / step_s
    peak_flops, peak_source = peak(recipe, args.peak_tflops)
    record = result.record
    fit = record["segments"][-1]
    out = {
        "date": date.today().isoformat(), "recipe": name, "overrides": overrides,
        "command": " ".join(["python", "scripts/bench_train.py", *sys.argv[1:]]),
        "machine": platform.node(), "cpu": record["hardware"].get("cpu_model"),
        "device": torch.cuda.get_device_name() if recipe.train.accelerator != "cpu"
        and torch.cuda.is_available() else "cpu",
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "parameters": result.parameters,
        "steps": record["optimizer_steps"], "tokens_per_step": tokens_per_step,
        "median_step_s": step_s, "tokens_per_s_steady": tokens_per_s,
        "tokens_per_s_whole_fit": result.tokens_per_s, "wall_s": result.wall_s,
        "flops_per_token": result.flops_per_token,
        "achieved_tflops": tokens_per_s * result.flops_per_token / 1e12,
        "peak_tflops": peak_flops / 1e12, "peak_source": peak_source,
        "mfu": tokens_per_s * result.flops_per_token / peak_flops,
        "train_joules": record["train_joules"],
        "train_tokens_per_wh": (fit.get("tokens") or 0) / (fit["joules"] / 3600),
        "method": record["method"], "val_loss": result.val_loss,
        "data": "synthetic random tokens" if args.synthetic_data else "the recipe's corpus",
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
