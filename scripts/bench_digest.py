"""Throughput of `weights_sha256` over a state_dict, in GB/s.

Usage:
    python scripts/bench_digest.py [--gb 1.0] [--repeats 5] [--dtype float32]

Builds a GPT-2-small-shaped state_dict (tensors of 768 x 3072 and the like) totalling
`--gb` gigabytes on the CPU, digests it `--repeats` times, and reports the median time and
throughput; `hashlib.sha256` over one contiguous buffer of the same size is the ceiling
measured beside it.
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from depth.record.digest import weights_sha256  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    per_tensor = 768 * 3072
    n_tensors = max(1, int(args.gb * 1e9 / (per_tensor * torch.finfo(dtype).bits // 8)))
    state = {f"h.{i}.mlp.c_fc.weight": torch.randn(768, 3072).to(dtype) for i in range(n_tensors)}
    total = sum(t.numel() * t.element_size() for t in state.values())
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        weights_sha256(state)
        times.append(time.perf_counter() - t0)
    flat = torch.cat([t.reshape(-1) for t in state.values()]).view(torch.uint8).numpy()
    ceiling = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        hashlib.sha256(flat.data).hexdigest()
        ceiling.append(time.perf_counter() - t0)
    med, ceil = statistics.median(times), statistics.median(ceiling)
    print(f"date {time.strftime('%Y-%m-%d')}, {platform.node()}, {platform.processor()}, "
          f"torch {torch.__version__}")
    print(f"command: python scripts/bench_digest.py {' '.join(sys.argv[1:])}")
    print(f"state_dict: {n_tensors} tensors, {total / 1e9:.3f} GB {args.dtype}")
    print(f"weights_sha256: median {med:.3f} s = {total / med / 1e9:.2f} GB/s "
          f"(min {min(times):.3f} s, max {max(times):.3f} s, {args.repeats} runs)")
    print(f"hashlib.sha256 on one buffer (ceiling): median {ceil:.3f} s = "
          f"{total / ceil / 1e9:.2f} GB/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
