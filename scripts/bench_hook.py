"""What `DepthCallback` costs a fit: per optimizer step, and once per fit.

Usage:
    python scripts/bench_hook.py [--steps 2000] [--repeats 7] [--fixed-repeats 5]
                                 [--json OUT.json]

``--fixed-repeats 0`` measures per step only. The ``depth`` imported is this checkout's,
unless ``PYTHONPATH`` is set (to compare two checkouts' code with one script).

Per step. A model so small that a step is almost all Lightning (one 8x8 linear layer,
SGD, a batch of 8 on one torch thread, no logger, no progress bar, no checkpointing) is
trained for ``--steps`` optimizer steps under three arms, alternated in a rotating order
in one process: ``bare`` (no extra callback), ``empty`` (a `Callback` that overrides
nothing: what Lightning's hook dispatch costs any callback) and ``depth``
(``DepthCallback(meter, tracking=False, sidecar=False)`` with a constant-power meter whose
read costs about a microsecond). Two measures:

- in the hooks: in the ``depth`` arm, the time spent inside depth's per-step hooks
  (``on_train_batch_start`` + ``on_train_batch_end``) is taken with ``perf_counter_ns``
  around each call, per optimizer step; reported as the median and p99 over every step of
  every run, and the mean (which carries the ledger's work, done once per
  ``flush_interval_s`` for the steps queued since). These are the figures the goal is
  set on.
- over the whole loop: each run's training loop is timed from `on_train_start` to
  `on_train_end` by a timer callback present in every arm; the per-step difference of the
  arms' medians (depth over ``bare`` and over ``empty``) includes Lightning's dispatch of
  every hook to one more callback, and the noise of a 1 ms step on a shared VM.

Once per fit. Each sample is a fresh Python process (so that importing MLflow and
starting its writer are paid as a user's script pays them), training 5 steps and saving
one checkpoint: ``bare`` (no DepthCallback), ``off`` (``tracking=False``) and ``own-run``
(the default: depth opens its own run in a SQLite store that already exists, as on every
run after a user's first). The differences of the medians of the whole ``trainer.fit``
call are the fixed costs. ``first-run`` (a store created by this fit) is reported too, and
the same three arms in one warm process (after one fit: MLflow imported, its client made),
as in a sweep or in any script that already uses MLflow.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if not os.environ.get("PYTHONPATH"):  # else the code named there (side-by-side runs)
    sys.path.insert(0, str(ROOT))


class ConstantPowerMeter:
    """100 W on one device since creation: a read costs ~1 µs (no hardware)."""

    method = "test-constant"

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def devices(self) -> list[str]:
        return ["gpu:0"]

    def read(self) -> dict[str, float]:
        return {"gpu:0": 100.0 * (time.monotonic() - self.t0)}

    def close(self) -> None:
        pass


def tiny_fit(steps: int, callbacks: list[Any], root: str, checkpoint: bool = False) -> float:
    """Trains the tiny model for `steps` steps; returns the training loop's seconds."""
    import pytorch_lightning as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(8, 8)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            (x,) = batch
            return self.layer(x).square().mean()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=1e-3)

    class LoopTimer(pl.Callback):
        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            self.t0 = time.perf_counter()

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            self.seconds = time.perf_counter() - self.t0

    data = DataLoader(TensorDataset(torch.randn(8 * 64, 8)), batch_size=8)
    timer = LoopTimer()
    trainer = pl.Trainer(max_steps=steps, logger=False, enable_progress_bar=False,
                         enable_checkpointing=checkpoint, enable_model_summary=False,
                         callbacks=[*callbacks, timer], default_root_dir=root,
                         accelerator="cpu", devices=1, num_sanity_val_steps=0)
    trainer.fit(Tiny(), data)
    return timer.seconds


def timed_depth_callback() -> Any:
    """A `DepthCallback` that records the nanoseconds its per-step hooks take, per step."""
    from depth import DepthCallback

    class Timed(DepthCallback):
        def __init__(self) -> None:
            super().__init__(ConstantPowerMeter(), tracking=False, sidecar=False)
            self.step_ns: list[int] = []
            self._start_ns = 0

        def on_train_batch_start(self, *args: Any) -> None:
            t0 = time.perf_counter_ns()
            super().on_train_batch_start(*args)
            self._start_ns = time.perf_counter_ns() - t0

        def on_train_batch_end(self, *args: Any) -> None:
            t0 = time.perf_counter_ns()
            super().on_train_batch_end(*args)
            self.step_ns.append(self._start_ns + time.perf_counter_ns() - t0)

    return Timed()


def per_step(steps: int, repeats: int) -> dict[str, Any]:
    import pytorch_lightning as pl
    import torch

    torch.set_num_threads(1)
    timed: list[Any] = []
    arms = {
        "bare": lambda: [],
        "empty": lambda: [pl.Callback()],
        "depth": lambda: timed.append(timed_depth_callback()) or [timed[-1]],
    }
    names = list(arms)
    runs: dict[str, list[float]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as root:
        tiny_fit(200, [], root)  # warm-up: imports, allocator, first-call paths
        for r in range(repeats):
            for name in names[r % len(names):] + names[:r % len(names)]:
                runs[name].append(tiny_fit(steps, arms[name](), root))
    med = {name: statistics.median(v) for name, v in runs.items()}
    hook_us = sorted(ns / 1000 for cb in timed for ns in cb.step_ns[10:])  # after warm-up
    return {
        "steps": steps, "repeats": repeats, "runs_s": runs, "median_s": med,
        "hook_us": {"median": statistics.median(hook_us), "mean": statistics.fmean(hook_us),
                    "p99": hook_us[int(0.99 * (len(hook_us) - 1))], "n": len(hook_us)},
        "step_us": {name: 1e6 * m / steps for name, m in med.items()},
        "depth_over_bare_us": 1e6 * (med["depth"] - med["bare"]) / steps,
        "depth_over_empty_us": 1e6 * (med["depth"] - med["empty"]) / steps,
        "empty_over_bare_us": 1e6 * (med["empty"] - med["bare"]) / steps,
    }


def one_fit(arm: str, store: str) -> float:
    """One fit of 5 steps in this (fresh) process; the whole trainer.fit call's seconds."""
    import torch

    torch.set_num_threads(1)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}/mlflow.db"
    from depth import DepthCallback

    callbacks = [] if arm == "bare" else [DepthCallback(ConstantPowerMeter(),
                                                        tracking=arm == "own-run")]
    with tempfile.TemporaryDirectory() as root:
        t0 = time.perf_counter()
        tiny_fit(5, callbacks, root, checkpoint=True)
        return time.perf_counter() - t0


def fixed_cost_warm(repeats: int) -> dict[str, Any]:
    """The fixed costs in one process that has fitted once already (MLflow imported, the
    store's client made: a sweep, or any script with an MLFlowLogger)."""
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        from depth import DepthCallback

        def fit(arm: str) -> float:
            callbacks = [] if arm == "bare" else [
                DepthCallback(ConstantPowerMeter(), tracking=arm == "own-run")]
            with tempfile.TemporaryDirectory() as root:
                t0 = time.perf_counter()
                tiny_fit(5, callbacks, root, checkpoint=True)
                return time.perf_counter() - t0

        fit("own-run")  # warm-up: imports, the store, CodeCarbon's tables
        arms = ["bare", "off", "own-run"]
        runs: dict[str, list[float]] = {arm: [] for arm in arms}
        for r in range(repeats):
            for arm in arms[r % 3:] + arms[:r % 3]:
                runs[arm].append(fit(arm))
        del os.environ["MLFLOW_TRACKING_URI"]
    med = {arm: statistics.median(v) for arm, v in runs.items()}
    return {"repeats": repeats, "runs_s": runs, "median_s": med,
            "fixed_cost_s": med["own-run"] - med["bare"],
            "tracking_s": med["own-run"] - med["off"], "depth_off_s": med["off"] - med["bare"]}


def fit_in_process(arm: str, store: str) -> float:
    out = subprocess.run([sys.executable, __file__, "--one-fit", arm, "--store", store],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    return float(out.stdout.strip().splitlines()[-1])


def fixed_cost(repeats: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        store = str(Path(tmp) / "store")
        first = fit_in_process("own-run", store)  # creates the store (migrations)
        arms = ["bare", "off", "own-run"]
        runs: dict[str, list[float]] = {arm: [] for arm in arms}
        for r in range(repeats):
            for arm in arms[r % 3:] + arms[:r % 3]:
                runs[arm].append(fit_in_process(arm, store))
        fresh = [fit_in_process("own-run", str(Path(tmp) / f"fresh{i}")) for i in range(3)]
    med = {arm: statistics.median(v) for arm, v in runs.items()}
    return {"repeats": repeats, "runs_s": runs, "median_s": med,
            "fixed_cost_s": med["own-run"] - med["bare"],
            "tracking_s": med["own-run"] - med["off"], "depth_off_s": med["off"] - med["bare"],
            "first_run_s": {"first": first, "fresh_stores": fresh,
                            "fixed_cost_s": statistics.median(fresh) - med["bare"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--fixed-repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--one-fit", choices=["bare", "off", "own-run"], help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_fit:
        print(one_fit(args.one_fit, args.store))
        return
    result = {"date": date.today().isoformat(), "machine": platform.platform(),
              "cpu_count": os.cpu_count(), "python": platform.python_version(),
              "per_step": per_step(args.steps, args.repeats)}
    if args.fixed_repeats > 0:
        result.update(fixed=fixed_cost(args.fixed_repeats),
                      fixed_warm=fixed_cost_warm(args.fixed_repeats))
    p = result["per_step"]
    print(f"per step ({p['steps']} steps, {p['repeats']} alternated runs per arm, medians):")
    print(f"  in depth's hooks: mean {p['hook_us']['mean']:.1f} µs, "
          f"median {p['hook_us']['median']:.1f} µs, "
          f"p99 {p['hook_us']['p99']:.1f} µs per optimizer step ({p['hook_us']['n']} steps)")
    for name, us in p["step_us"].items():
        print(f"  {name:6s} {us:8.1f} µs/step   loop {p['median_s'][name]:.3f} s")
    print(f"  depth over bare : {p['depth_over_bare_us']:.1f} µs/step")
    print(f"  depth over empty: {p['depth_over_empty_us']:.1f} µs/step "
          f"(empty over bare: {p['empty_over_bare_us']:.1f} µs/step)")
    if args.fixed_repeats > 0:
        print_fixed(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


def print_fixed(result: dict[str, Any]) -> None:
    f = result["fixed"]
    print(f"fixed cost per fit ({f['repeats']} fresh processes per arm, medians of the "
          "whole trainer.fit of 5 steps and one checkpoint):")
    print("  " + ", ".join(f"{arm} {s:.3f} s" for arm, s in f["median_s"].items()))
    print(f"  depth with its own run over bare: {f['fixed_cost_s']:.3f} s "
          f"(tracking off over bare: {f['depth_off_s']:.3f} s; own run over off: "
          f"{f['tracking_s']:.3f} s); first run in a new store: "
          f"{f['first_run_s']['fixed_cost_s']:.3f} s")
    w = result["fixed_warm"]
    print(f"fixed cost per fit in a warm process ({w['repeats']} fits per arm, medians):")
    print("  " + ", ".join(f"{arm} {s:.3f} s" for arm, s in w["median_s"].items()))
    print(f"  depth with its own run over bare: {w['fixed_cost_s']:.3f} s "
          f"(tracking off over bare: {w['depth_off_s']:.3f} s; own run over off: "
          f"{w['tracking_s']:.3f} s)")


if __name__ == "__main__":
    main()
