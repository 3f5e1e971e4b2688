"""The GPU measurement suite: how right depth's numbers are on a real NVIDIA GPU.

Usage (on a GPU machine with torch, Lightning and nvidia-ml-py; mlflow is not needed):

    python scripts/gpu_suite.py [--out-dir docs/measurements] [--gpu 0] [--quick]

Sections, each written to one JSON and one Markdown file
(``<date>-<device>.json`` / ``.md`` under ``--out-dir``):

1. ``counter``: NVML total-energy counter read latency (median, p99) and its observed
   update period (polled every ~1 ms for 2 s under load).
2. ``steady`` / ``bursty``: the counter against an independent integration of
   ``POWER_INSTANT`` samples (100 Hz, trapezoid) over the same window, on a steady matmul
   load and on a bursty one (short kernels with idle gaps); the disagreement in %.
3. ``attribution``: GPT-2-small training steps; at every step end the counter is read
   before and after ``torch.cuda.synchronize()``; the ledger's attribution turns the
   unsynchronized reads (``sync="none"``), reads synchronized every 10th step
   (``"log"``) and synchronized reads (``"step"``, the reference) into per-step joules:
   the per-step error distribution and closure.
4. ``overhead``: GPT-2-small steps in a Lightning Trainer with and without
   `DepthCallback` (NVML counter, tracking off), alternated runs; median ratio.
5. ``inference``: `depth.serving.inference.measure` on GPT-2-small in bf16, batch sweep; tokens/Wh
   and the fraction of the compute ceiling (`depth.serving.physics`).
6. ``idle`` and ``suite``: idle power, and the energy of the whole suite.

All analysis is in `depth.accounting.measurement` (tested on CPU in CI); this script only gathers
readings. ``run_suite(nvml=..., device="cpu", model="tiny")`` runs every section on a
CPU against a test double of pynvml, which is how CI checks the script itself.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from depth.accounting import measurement  # noqa: E402
from depth.gpt.model import GPT, GPTConfig  # noqa: E402

MODELS = {
    "gpt2-small": dict(vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768),
    "tiny": dict(vocab_size=256, block_size=64, n_layer=2, n_head=2, n_embd=64),
}


class Gpu:
    """The NVML calls the suite makes, on one device."""

    def __init__(self, nvml: Any, index: int):
        self.nvml = nvml
        nvml.nvmlInit()
        self.handle = nvml.nvmlDeviceGetHandleByIndex(index)
        self.name = str(nvml.nvmlDeviceGetName(self.handle))
        self.driver = str(nvml.nvmlSystemGetDriverVersion())
        try:
            nvml.nvmlDeviceGetFieldValues(self.handle, [nvml.NVML_FI_DEV_POWER_INSTANT])
            self.instant = True
        except Exception:
            self.instant = False

    def energy_j(self) -> float:
        return self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) / 1000.0

    def power_w(self) -> float:
        if self.instant:
            value = self.nvml.nvmlDeviceGetFieldValues(
                self.handle, [self.nvml.NVML_FI_DEV_POWER_INSTANT])[0]
            if value.nvmlReturn == self.nvml.NVML_SUCCESS:
                return value.value.uiVal / 1000.0
        return self.nvml.nvmlDeviceGetPowerUsage(self.handle) / 1000.0

    def read(self) -> dict[str, float]:
        return {"gpu": self.energy_j()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def steady_load(device: torch.device, size: int) -> Callable[[], None]:
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16 if device.type == "cuda"
                    else torch.float32)

    def run() -> None:
        a @ a

    return run


def bursty_load(device: torch.device, size: int, gap_s: float) -> Callable[[], None]:
    steady = steady_load(device, size // 4)

    def run() -> None:
        for _ in range(3):
            steady()
        _sync(device)
        time.sleep(gap_s)

    return run


def counter_section(gpu: Gpu, device: torch.device, calls: int, poll_s: float,
                    size: int) -> dict[str, Any]:
    durations = []
    for _ in range(calls):
        t0 = time.perf_counter()
        gpu.energy_j()
        durations.append(time.perf_counter() - t0)
    load = steady_load(device, size)
    stop = threading.Event()

    def keep_busy() -> None:
        while not stop.is_set():
            load()
            _sync(device)

    worker = threading.Thread(target=keep_busy, daemon=True)
    worker.start()
    samples = []
    end = time.perf_counter() + poll_s
    while time.perf_counter() < end:
        samples.append((time.perf_counter(), gpu.energy_j()))
        time.sleep(0.001)
    stop.set()
    worker.join()
    return {"read_latency": measurement.latency_stats(durations),
            "update_period": measurement.update_period(samples), "polls": len(samples)}


def counter_vs_power(gpu: Gpu, device: torch.device, load: Callable[[], None],
                     seconds: float, sample_s: float = 0.01) -> dict[str, Any]:
    """Counter joules against integrated power samples over the same window."""
    samples: list[tuple[float, float]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append((time.perf_counter(), gpu.power_w()))
            time.sleep(sample_s)

    sampler = threading.Thread(target=sample, daemon=True)
    _sync(device)
    sampler.start()
    time.sleep(3 * sample_s)
    t0, e0 = time.perf_counter(), gpu.energy_j()
    while time.perf_counter() - t0 < seconds:
        load()
    _sync(device)
    t1, e1 = time.perf_counter(), gpu.energy_j()
    time.sleep(3 * sample_s)
    stop.set()
    sampler.join()
    window = [(t, p) for t, p in samples if t0 <= t <= t1]
    integrated = measurement.integrate_power(window) * (t1 - t0) / max(
        window[-1][0] - window[0][0], 1e-9) if len(window) > 1 else float("nan")
    counter = e1 - e0
    return {"seconds": t1 - t0, "counter_j": counter, "integrated_j": integrated,
            "power_samples": len(window), "mean_w": counter / (t1 - t0),
            "disagreement_pct": measurement.disagreement_pct(counter, integrated)}


def _gpt(model: str, device: torch.device, dtype: torch.dtype) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**MODELS[model])).to(device=device, dtype=dtype)


def attribution_section(gpu: Gpu, device: torch.device, model: str, steps: int,
                        batch: int, log_every: int = 10) -> dict[str, Any]:
    """One training run, reads before and after synchronizing at every step end."""
    cfg = MODELS[model]
    gpt = _gpt(model, device, torch.float32)
    opt = torch.optim.AdamW(gpt.parameters(), lr=1e-4)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    x = torch.randint(0, cfg["vocab_size"], (batch, cfg["block_size"]), device=device)
    unsynced: list[tuple[float, float, int | None]] = []
    synced: list[tuple[float, float, int | None]] = []
    _sync(device)
    start = (time.perf_counter(), gpu.energy_j(), None)
    unsynced.append(start)
    synced.append(start)
    for step in range(1, steps + 1):
        with autocast:
            _, loss, _ = gpt(x, x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        unsynced.append((time.perf_counter(), gpu.energy_j(), step))
        _sync(device)
        synced.append((time.perf_counter(), gpu.energy_j(), step))
    time.sleep(0.3)  # the counter's last update
    end = (time.perf_counter(), gpu.energy_j(), None)
    logged = [s if i % log_every == 0 else u for i, (u, s) in
              enumerate(zip(unsynced[1:], synced[1:]), start=1)]
    reference = measurement.step_joules([*synced, end])
    out: dict[str, Any] = {"steps": steps, "batch": batch, "model": model,
                           "total_j": end[1] - start[1],
                           "median_step_s": statistics.median(
                               b[0] - a[0] for a, b in zip(synced, synced[1:]))}
    for name, reads in (("none", unsynced[1:]), ("log", logged)):
        joules = measurement.step_joules([start, *reads, end])
        out[name] = measurement.attribution_error(reference[1:], joules[1:])  # step 1: set-up
    # Closure: the steps and the tail (last step end to the final read) are the whole.
    out["steps_j"] = sum(reference)
    out["tail_j"] = out["total_j"] - sum(reference)
    return out


def overhead_section(gpu_index: int, device: torch.device, model: str, steps: int,
                     batch: int, runs: int, nvml: Any) -> dict[str, Any]:
    """Lightning steps with and without DepthCallback, alternated."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    from depth.lightning.callback import DepthCallback
    from depth.meters.nvml import NvmlCounterMeter

    cfg = MODELS[model]

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.gpt = _gpt(model, torch.device("cpu"), torch.float32)

        def training_step(self, b: Any, i: int) -> torch.Tensor:
            return self.gpt(b[0], b[0])[1]

        def configure_optimizers(self) -> Any:
            return torch.optim.AdamW(self.parameters(), lr=1e-4)

    class LoopTimer(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, b, i) -> None:
            if i == 5:  # after warm-up
                _sync(device)
                self.t0 = time.perf_counter()

        def on_train_end(self, trainer, pl_module) -> None:
            _sync(device)
            self.seconds = time.perf_counter() - self.t0

    data = TensorDataset(torch.randint(0, cfg["vocab_size"], (batch * (steps + 5),
                                                               cfg["block_size"])))
    times: dict[str, list[float]] = {"with": [], "without": []}
    for i in range(2 * runs):
        variant = ("with", "without")[i % 2] if (i // 2) % 2 == 0 else \
            ("without", "with")[i % 2]
        timer = LoopTimer()
        callbacks: list[Any] = [timer]
        if variant == "with":
            meter = NvmlCounterMeter([gpu_index], nvml=nvml)
            callbacks.append(DepthCallback(meter, tracking=False, sidecar=False))
        trainer = pl.Trainer(max_steps=steps + 5, accelerator="gpu" if device.type == "cuda"
                             else "cpu", devices=1, logger=False, callbacks=callbacks,
                             enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False,
                             precision="bf16-mixed" if device.type == "cuda" else "32-true")
        trainer.fit(Module(), DataLoader(data, batch_size=batch))
        times[variant].append(timer.seconds)
    return {"steps_timed": steps, **measurement.overhead_ratio(times["with"], times["without"]),
            "with_s": times["with"], "without_s": times["without"]}


def inference_section(gpu: Gpu, device: torch.device, model: str, batch_sizes: list[int],
                      quick: bool) -> dict[str, Any]:
    from depth.serving import physics
    from depth.serving.inference import EvalConfig, measure

    dtype = "bf16" if device.type == "cuda" else "fp32"
    gpt = _gpt(model, device, torch.float32)

    class Adapter(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gpt, self.config = gpt, gpt.config

        def forward(self, idx: torch.Tensor, past: Any = None) -> Any:
            logits, _, cache = self.gpt(idx, past=past)
            return logits, cache

    block = MODELS[model]["block_size"]
    config = EvalConfig(batch_sizes=batch_sizes, prompt_tokens=min(128, block // 2),
                        new_tokens=min(128, block // 2), dtype=dtype,
                        repeats=3, min_window_s=0.2 if quick else 1.0,
                        idle_s=0.2 if quick else 2.0)
    result = measure(Adapter(), gpu.read, config, MODELS[model]["vocab_size"], device,
                     method="nvml-counter").to_dict()
    out = {k: result[k] for k in ("tokens_per_wh", "joules_per_token", "best_batch_size",
                                  "idle_w", "stopped")}
    out["batches"] = [{k: b[k] for k in ("batch_size", "tokens_per_wh", "net_tokens_per_wh",
                                         "prefill_joules", "decode_joules", "seconds")}
                      for b in result["batches"]]
    try:
        hw = physics.hardware(gpu.name)
        ceiling = physics.ceiling_tokens_per_wh(gpt.flops_per_token(training=False), hw)
        out.update(hardware=hw.name, ceiling_tokens_per_wh=ceiling,
                   ceiling_fraction=result["tokens_per_wh"] / ceiling)
    except ValueError:
        out["hardware"] = f"{gpu.name}: not in the table, no ceiling"
    return out


def run_suite(nvml: Any, device: str = "cuda", gpu_index: int = 0, model: str = "gpt2-small",
              quick: bool = False, out_dir: Path | None = None,
              command: str = "") -> dict[str, Any]:
    """Runs every section; returns the results (and writes JSON + Markdown to `out_dir`)."""
    dev = torch.device(device)
    gpu = Gpu(nvml, gpu_index)
    t_start, e_start = time.perf_counter(), gpu.energy_j()
    small = quick or dev.type != "cuda"
    results: dict[str, Any] = {
        "date": date.today().isoformat(), "device": gpu.name, "driver": gpu.driver,
        "torch": torch.__version__, "cuda": torch.version.cuda, "host": platform.node(),
        "command": command, "power_instant_field": gpu.instant}
    idle_s = 1.0 if small else 5.0
    e0 = gpu.energy_j()
    time.sleep(idle_s)
    results["idle"] = {"seconds": idle_s, "power_w": (gpu.energy_j() - e0) / idle_s}
    size = 256 if small else 8192
    results["counter"] = counter_section(gpu, dev, calls=200 if small else 2000,
                                         poll_s=0.5 if small else 2.0, size=size)
    seconds = 1.0 if small else 10.0
    results["steady"] = counter_vs_power(gpu, dev, steady_load(dev, size), seconds)
    results["bursty"] = counter_vs_power(gpu, dev, bursty_load(dev, size, 0.02), seconds)
    results["attribution"] = attribution_section(gpu, dev, model, steps=12 if small else 60,
                                                 batch=2 if small else 8)
    results["overhead"] = overhead_section(gpu_index, dev, model, steps=5 if small else 40,
                                           batch=2 if small else 8, runs=2 if small else 3,
                                           nvml=nvml)
    results["inference"] = inference_section(
        gpu, dev, model, [1, 4] if small else [1, 4, 16, 64, 256], quick=small)
    results["suite"] = {"seconds": time.perf_counter() - t_start,
                        "joules": gpu.energy_j() - e_start}
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = f"{results['date']}-{gpu.name.replace(' ', '-')}"
        (out_dir / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
        (out_dir / f"{stem}.md").write_text(
            f"# GPU measurement suite: {gpu.name}, {results['date']}\n\n"
            f"Driver {gpu.driver}, torch {results['torch']} (CUDA {results['cuda']}). "
            f"Command: `{command}`. Raw results: `{stem}.json`.\n\n"
            + measurement.summarize({k: v for k, v in results.items()
                                     if isinstance(v, dict)}) + "\n")
        results["written"] = [str(out_dir / f"{stem}.json"), str(out_dir / f"{stem}.md")]
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path("docs/measurements"))
    parser.add_argument("--gpu", type=int, default=0)
    parser.add_argument("--model", choices=sorted(MODELS), default="gpt2-small")
    parser.add_argument("--quick", action="store_true", help="Short windows (a smoke run).")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_suite: no CUDA GPU here", file=sys.stderr)
        return 2
    import pynvml

    torch.cuda.set_device(args.gpu)
    results = run_suite(pynvml, f"cuda:{args.gpu}", args.gpu, args.model, args.quick,
                        args.out_dir, command=" ".join(["python", *sys.argv]))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
