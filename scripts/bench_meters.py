"""Cost of one `read()` for every meter available here.

Usage:
    python scripts/bench_meters.py [--reads 20000] [--json OUT.json]

Each read is timed on its own with ``perf_counter_ns``; the median and p99 are reported.
Real sources are benchmarked when present (NVML counter and power, RAPL, the estimate).
Two rows use test doubles and measure only depth's own Python around the hardware call:
RAPL on a fake powercap tree in a temp dir (sysfs reads cost more than tmpfs reads), and
the NVML counter over the pynvml double (the real driver call is not in it). They are
labelled as such and are no substitute for a reading on real hardware.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def time_reads(read: Callable[[], Any], n: int) -> dict[str, float]:
    for _ in range(min(1000, n)):  # warm-up
        read()
    samples = []
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        read()
        samples.append(clock() - t0)
    samples.sort()
    return {"reads": n, "median_us": statistics.median(samples) / 1e3,
            "p99_us": samples[int(0.99 * (n - 1))] / 1e3, "mean_us": sum(samples) / n / 1e3}


def candidates(tmp: Path) -> list[tuple[str, str, Callable[[], Any]]]:
    """(row name, what it measures, factory) for each meter to try."""
    from depth.meters.estimate import EstimateMeter
    from depth.meters.nvml import NvmlCounterMeter, NvmlPowerMeter
    from depth.meters.rapl import RaplMeter
    from tests.doubles.powercap import FakePowercap
    from tests.doubles.pynvml_double import FakeNvml, gpus

    def fake_rapl() -> RaplMeter:
        FakePowercap.server(tmp / "powercap")
        return RaplMeter(tmp / "powercap")

    return [
        ("nvml-counter", "real NVML driver", lambda: NvmlCounterMeter()),
        ("nvml-power", "real NVML driver, sampler thread running", lambda: NvmlPowerMeter()),
        ("rapl", "real /sys/class/powercap", lambda: RaplMeter()),
        ("estimate", "real (CodeCarbon model, sampler thread running)", lambda: EstimateMeter()),
        ("rapl (fake tree)", "depth's code over a fake powercap tree on local disk", fake_rapl),
        ("nvml-counter (double)", "depth's code over the pynvml test double, no driver call",
         lambda: NvmlCounterMeter(nvml=FakeNvml(gpus(1)), visible_devices=None)),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=20_000, help="reads per meter (>= 10000)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    if args.reads < 10_000:
        parser.error("--reads must be at least 10000")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, what, factory in candidates(Path(tmp)):
            try:
                meter = factory()
            except Exception as err:  # unavailable here: say why, keep going
                rows.append({"meter": name, "measures": what, "skipped": str(err).splitlines()[0]})
                continue
            try:
                rows.append({"meter": name, "measures": what, **time_reads(meter.read, args.reads)})
            finally:
                meter.close()
    result = {"date": date.today().isoformat(), "machine": platform.node(),
              "cpu": platform.processor() or platform.machine(),
              "python": platform.python_version(),
              "command": "python scripts/bench_meters.py " + " ".join(sys.argv[1:]), "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print("| meter | what it measures | median us | p99 us |\n|---|---|---:|---:|")
    for r in rows:
        if "skipped" in r:
            print(f"| {r['meter']} | skipped: {r['skipped']} | - | - |")
        else:
            print(f"| {r['meter']} | {r['measures']} | {r['median_us']:.2f} | {r['p99_us']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
