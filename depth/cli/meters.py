"""`depth meters`: the energy sources this machine has, and a reading of them."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

from jsonargparse import ArgumentParser, Namespace

from depth.cli.common import UsageError, positive

MAX_SECONDS = 86_400.0  # a day; for longer, meter the job itself (DepthCallback)

# ----------------------------------------------------------------------------- meters

def declare_meters(p: ArgumentParser) -> None:
    from depth.meters import CPU_CHOICES, GPU_CHOICES

    p.add_argument("--seconds", type=float, default=3.0,
                   help="How long to read the meters, in seconds.")
    p.add_argument("--json", action="store_true", help="Print one JSON object instead of tables.")
    p.add_argument("--gpus", type=str, default=None,
                   help="CUDA ordinals to meter, comma-separated (default: every visible GPU).")
    p.add_argument("--gpu", choices=GPU_CHOICES, default="auto",
                   help="GPU source: NVML counter, else power sampling (auto), or one of them.")
    p.add_argument("--cpu", choices=CPU_CHOICES, default="auto",
                   help="CPU/DRAM source: RAPL, else estimate (auto), or one of them.")
    p.add_argument("--powercap-root", type=str, default=None,
                   help="Where RAPL zones live (default /sys/class/powercap).")


def _parse_gpus(text: str | None) -> list[int] | None:
    if text is None or text == "":
        return None
    try:
        gpus = [int(part) for part in text.split(",")]
    except ValueError:
        raise UsageError(f"--gpus takes CUDA ordinals like 0,1 (got {text!r})") from None
    if any(g < 0 for g in gpus):
        raise UsageError(f"--gpus takes non-negative CUDA ordinals (got {text!r})")
    return gpus


def _read_for(meter: Any, seconds: float, progress: TextIO) -> tuple[dict[str, float], float,
                                                                        dict[str, str]]:
    """Reads `meter` over `seconds`; returns joules per device, elapsed s, failures."""
    from depth.meters import MeterReadError

    failures: dict[str, str] = {}

    def read() -> dict[str, float]:
        try:
            return dict(meter.read())
        except MeterReadError as err:
            failures[err.device] = err.reason
            return err.partial

    start_j = read()
    t0 = time.monotonic()
    deadline = t0 + seconds
    tty = progress.isatty()
    print(f"reading for {seconds:g} s ...", file=progress, flush=True)
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 1.0))
        if tty:
            print(f"\r  {max(deadline - time.monotonic(), 0):4.1f} s left", end="", file=progress,
                  flush=True)
    end_j = read()
    elapsed = time.monotonic() - t0
    if tty:
        print("\r" + " " * 20 + "\r", end="", file=progress, flush=True)
    return {d: end_j[d] - start_j[d] for d in end_j if d in start_j}, elapsed, failures


def run_meters(args: Namespace) -> int:
    """`depth meters`: which sources were found and rejected, then a timed reading."""
    from pathlib import Path

    from depth.meters import MeterUnavailable, auto_meter
    from depth.meters.rapl import POWERCAP_ROOT

    seconds = positive("seconds", args.seconds)
    if not seconds <= MAX_SECONDS:  # a reading, not a daemon (1e308 s would never end)
        raise UsageError(f"--seconds takes at most {MAX_SECONDS:g} s, a day (got "
                         f"{seconds:g}); meter a longer job with DepthCallback")
    gpus = _parse_gpus(args.gpus)
    root = Path(args.powercap_root) if args.powercap_root else POWERCAP_ROOT
    try:
        meter = auto_meter(gpus, gpu=args.gpu, cpu=args.cpu, powercap_root=root)
    except MeterUnavailable as err:
        print(f"depth meters: {err}", file=sys.stderr)
        return 1
    try:
        if not args.json:
            _print_sources(meter)
        joules, elapsed, failures = _read_for(meter, seconds, sys.stderr)
    finally:
        meter.close()
    methods = meter.methods()
    devices = {d: {"method": methods[d], "joules": joules[d], "watts": joules[d] / elapsed}
               for d in meter.devices() if d in joules}
    result = {
        "method": meter.method,
        "measured": all(m != "estimate" for m in methods.values()),
        "chosen": [s.to_dict() for s in meter.sources if s.chosen],
        "rejected": [{"method": s.method, "reason": s.reason} for s in meter.rejected],
        "seconds": elapsed,
        "devices": devices,
        "failed": failures,
        "total_joules": sum(d["joules"] for d in devices.values()),
        "flags": meter.flags(),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_reading(result)
    return 0


def _print_sources(meter: Any) -> None:
    print("energy sources")
    for s in meter.sources:
        devices = ", ".join(s.devices) or "-"
        print(f"  {'chosen' if s.chosen else 'rejected':<9} {s.method:<13} {devices:<15} "
              f"{s.reason}")


def _print_reading(result: dict[str, Any]) -> None:
    print(f"\nreading over {result['seconds']:.2f} s")
    print(f"  {'device':<8} {'method':<13} {'joules':>12} {'mean W':>10}")
    for device, d in result["devices"].items():
        print(f"  {device:<8} {d['method']:<13} {d['joules']:>12.3f} {d['watts']:>10.2f}")
    total = result["total_joules"]
    print(f"  {'total':<8} {'':<13} {total:>12.3f} {total / result['seconds']:>10.2f}")
    for device, reason in result["failed"].items():
        print(f"  {device}: read failed: {reason}")
    for flag in result["flags"]:
        print(f"  note: {flag}")
    if not result["measured"]:
        print("  'estimate' rows are CodeCarbon model estimates (TDP x this process's CPU-time"
              " share, RAM by size), not measurements.")
