"""Wall-time overhead of DepthCallback at ~10 ms steps, with an MLflow SQLite logger.

Usage:
    python scripts/bench_overhead.py [--steps 300] [--repeats 5] [--json OUT.json]

Every variant trains the same small token model (embedding, MLP, head) for `--steps`
optimizer steps with the same MLFlowLogger on one SQLite store, runs alternated
(A B C D, B C D A, ...) so drift hits all variants alike:

- ``baseline``: no energy callback;
- ``depth``: ``DepthCallback()`` (meter "auto": here the CodeCarbon-based estimate);
- ``codecarbon-task``: CodeCarbon's ``start_task``/``stop_task`` around every step (the
  per-step anchor);
- ``naive-mlflow``: the same meter read every step, its four metrics sent with
  ``MLFlowLogger.log_metrics`` synchronously (what a first prototype does);
- ``depth-thread`` / ``depth-process``: ``DepthCallback`` with each MLflow writer forced
  (``depth`` uses ``mlflow_writer="auto"``);
- ``baseline-nolog`` / ``depth-nolog``: the same pair with no logger at all, which
  separates the callback's own cost from the cost of writing MLflow rows.

Reported per variant: median training-loop time (``on_train_start`` to ``on_train_end``,
final flushes included), its ratio to the baseline's median, the median step time, and
the median whole ``fit()`` time (set-up included: the estimate meter's CPU lookup runs
there once per fit).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
import warnings
from datetime import date
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from pytorch_lightning.callbacks import Callback  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

VOCAB, SEQ, BATCH, DIM, HIDDEN = 256, 32, 16, 128, 512


class TokenMLP(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(VOCAB, DIM)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(DIM, HIDDEN), torch.nn.GELU(),
                                       torch.nn.Linear(HIDDEN, DIM))
        self.head = torch.nn.Linear(DIM, VOCAB)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self.head(self.mlp(self.emb(x)))
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1))
        self.log("loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


class LoopTimer(Callback):
    def __init__(self) -> None:
        self.start = self.end = 0.0

    def on_train_start(self, *args: Any) -> None:
        self.start = time.perf_counter()

    def on_train_end(self, *args: Any) -> None:
        self.end = time.perf_counter()


class CodeCarbonPerStep(Callback):
    """CodeCarbon's task API around every training step."""

    def __init__(self) -> None:
        from codecarbon import OfflineEmissionsTracker

        self.tracker = OfflineEmissionsTracker(country_iso_code="USA", save_to_file=False,
                                               log_level="error", allow_multiple_runs=True)

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self.tracker.start_task(f"step-{trainer.global_step}")

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self.tracker.stop_task()


class NaiveMlflowPerStep(Callback):
    """Reads a meter every step and logs synchronously through the Lightning logger."""

    def __init__(self, tokens_per_step: int) -> None:
        self.meter: Any = None
        self.last = 0.0
        self.tokens_per_step = tokens_per_step

    def setup(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        from depth.meters import auto_meter

        self.meter = auto_meter(gpu="off")
        self.t0 = time.monotonic()

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        joules = sum(self.meter.read().values())
        t = time.monotonic()
        step_j = joules - self.last
        trainer.logger.log_metrics({"energy/joules": joules, "energy/step_joules": step_j,
                                    "energy/watts": step_j / max(t - self.t0, 1e-9),
                                    "energy/joules_per_token": step_j / self.tokens_per_step},
                                   step=trainer.global_step)
        self.last, self.t0 = joules, t

    def teardown(self, *args: Any, **kwargs: Any) -> None:
        self.meter.close()


def data(steps: int, batch: int = BATCH) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, VOCAB, (steps * batch, SEQ + 1), generator=g)
    return DataLoader(TensorDataset(tokens[:, :-1], tokens[:, 1:]), batch_size=batch)


def run(variant: str, steps: int, store: Path, batch: int = BATCH) -> dict[str, float]:
    from pytorch_lightning.loggers import MLFlowLogger

    from depth import DepthCallback

    extra: list[Callback] = {
        "baseline": lambda: [],
        "depth": lambda: [DepthCallback()],
        "depth-thread": lambda: [DepthCallback(mlflow_writer="thread")],
        "depth-process": lambda: [DepthCallback(mlflow_writer="process")],
        "baseline-nolog": lambda: [],
        "depth-nolog": lambda: [DepthCallback()],
        "codecarbon-task": lambda: [CodeCarbonPerStep()],
        "naive-mlflow": lambda: [NaiveMlflowPerStep(batch * SEQ)],
    }[variant]()
    timer = LoopTimer()
    logger: Any = False if variant.endswith("-nolog") else MLFlowLogger(
        experiment_name="bench-overhead", run_name=variant,
        tracking_uri=f"sqlite:///{store}/mlflow.db", artifact_location=str(store / "artifacts"))
    trainer = pl.Trainer(max_steps=steps, callbacks=[*extra, timer], logger=logger,
                         default_root_dir=str(store / variant), enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    trainer.fit(TokenMLP(), data(steps, batch))
    fit_s = time.perf_counter() - t0
    return {"loop_s": timer.end - timer.start, "fit_s": fit_s}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variants", default="baseline,depth,codecarbon-task,naive-mlflow")
    parser.add_argument("--batch", type=int, default=BATCH, help="sequences per step")
    parser.add_argument("--torch-threads", type=int, default=0,
                        help="torch intra-op threads (0: torch's default, every core)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    variants = args.variants.split(",")
    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    results: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp)
        run("baseline", 20, store, args.batch)  # warm-up: imports, store creation
        for r in range(args.repeats):
            order = variants[r % len(variants):] + variants[:r % len(variants)]
            for variant in order:
                results[variant].append(run(variant, args.steps, store, args.batch))
                print(f"repeat {r + 1}/{args.repeats} {variant:<16} "
                      f"loop {results[variant][-1]['loop_s']:.3f} s", file=sys.stderr)
    base = statistics.median(x["loop_s"] for x in results[variants[0]])
    rows = []
    for variant in variants:
        loop = statistics.median(x["loop_s"] for x in results[variant])
        rows.append({"variant": variant, "median_loop_s": loop, "ratio": loop / base,
                     "median_step_ms": 1000 * loop / args.steps,
                     "median_fit_s": statistics.median(x["fit_s"] for x in results[variant]),
                     "runs": results[variant]})
    out = {"date": date.today().isoformat(), "machine": platform.node(),
           "processor": platform.processor() or platform.machine(),
           "torch_threads": torch.get_num_threads(), "batch": args.batch, "steps": args.steps,
           "repeats": args.repeats,
           "command": "python scripts/bench_overhead.py " + " ".join(sys.argv[1:]), "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    print("| variant | median loop s | ratio to baseline | median step ms | median fit s |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['variant']} | {row['median_loop_s']:.3f} | {row['ratio']:.3f}x | "
              f"{row['median_step_ms']:.2f} | {row['median_fit_s']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
