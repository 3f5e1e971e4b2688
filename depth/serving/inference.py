"""Inference tokens per Wh: a batch-size sweep of generation, prefill and decode apart.

Any model with ``forward(idx)`` returning logits works; one whose ``forward`` also takes
``past`` (the KV-cache protocol of `depth.serving.adapters`, which
`depth.gpt.module.GPTModule` follows) decodes with its cache, any other recomputes the
context each step (``kv_cache: false``). A ``generate(prompt, new_tokens)`` callable works
too, measured as whole generations. The vocabulary is read from the logits.

How one batch size is measured:

1. The prompt (B x ``prompt_tokens`` random ids, seeded) is prefilled once untimed, and a
   full generation runs once as warm-up.
2. *Prefill window*: the prompt's forward pass is repeated k times; *decode window*: from
   the prefilled cache, ``new_tokens`` greedy decode steps (one token per forward, the KV
   cache growing; or the whole cropped context per forward without a cache) are repeated
   k times. A ``generate`` callable has one window per generation instead. k is set so
   that each window lasts at least ``min_window_s`` (the NVML counter refreshes only every
   ~100 ms); CUDA is synchronized at both edges of each window and the meter is read there.
3. Step 2 is repeated ``repeats`` times; the median is reported with the spread. When the
   repeats disagree (max/min joules per generation above ``max_spread``: a busy machine,
   a meter that lags), the whole set is measured again, at most ``remeasures`` times; the
   set with the least spread is kept, and flagged ``unstable`` if even that one spreads.

Tokens counted are *generated* tokens (B x ``new_tokens`` per generation); the joules are
prefill plus decode. ``idle_w`` is measured before the sweep with nothing running, and the
net figure subtracts idle power x time. The meter is read once before anything is timed,
so that a meter started by its first read (a sampler that then integrates everything since
its creation) charges that to no window.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from depth.serving.adapters import RecomputeRunner, Runner, runner_for
from depth.serving.physics import J_PER_WH
from depth.serving.table import attempts_text, spread_text

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MAX_BATCH_SIZE = 65_536  # beyond any sweep that fits; a typo of 1e11 must not reach malloc
MAX_WINDOW_S = 3_600.0  # longest measuring window or idle stretch (1e308 s overflows sleep)


@dataclass
class EvalConfig:
    """What `measure` sweeps.

    Attributes:
        batch_sizes: Batch sizes to measure, in order; the sweep stops at the first that
            does not fit in memory.
        prompt_tokens: Prompt length.
        new_tokens: Tokens generated per sequence.
        dtype: ``fp32``, ``bf16`` or ``fp16``.
        repeats: Measured repeats per batch size (>= 3 for a spread).
        min_window_s: Shortest measuring window.
        idle_s: Seconds of idle power measured before the sweep (0: none).
        seed: Seed of the random prompts.
        max_spread: Largest max/min ratio of the repeats' joules that counts as stable.
        remeasures: How many times an unstable batch size is measured again.
    """

    batch_sizes: list[int] = field(default_factory=lambda: [1, 4, 16, 64])
    prompt_tokens: int = 64
    new_tokens: int = 64
    dtype: str = "fp32"
    repeats: int = 3
    min_window_s: float = 0.5
    idle_s: float = 2.0
    seed: int = 0
    max_spread: float = 1.25
    remeasures: int = 2

    def __post_init__(self) -> None:
        if not self.batch_sizes or any(not 1 <= b <= MAX_BATCH_SIZE for b in self.batch_sizes):
            raise ValueError(f"batch_sizes must be ints from 1 to {MAX_BATCH_SIZE}; got "
                             f"{self.batch_sizes}")
        if self.prompt_tokens < 1 or self.new_tokens < 1:
            raise ValueError("prompt_tokens and new_tokens must be >= 1")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {self.dtype!r}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1; got {self.repeats}")
        if not (0 <= self.min_window_s <= MAX_WINDOW_S and 0 <= self.idle_s <= MAX_WINDOW_S):
            raise ValueError(f"min_window_s and idle_s must be 0 to {MAX_WINDOW_S:g} s; got "
                             f"{self.min_window_s:g} and {self.idle_s:g}")
        if not self.max_spread > 1:
            raise ValueError(f"max_spread must be > 1 (a max/min ratio); got {self.max_spread}")
        if self.remeasures < 0:
            raise ValueError(f"remeasures must be >= 0; got {self.remeasures}")


@dataclass
class BatchResult:
    """One batch size: medians over the repeats, and their spread."""

    batch_size: int
    tokens: int  # generated tokens per generation
    joules: float  # prefill + decode, per generation
    seconds: float
    tokens_per_wh: float
    prefill_joules: float | None  # None for a generate callable: one window, not two
    decode_joules: float | None
    net_tokens_per_wh: float | None  # idle power x time taken off
    tokens_per_wh_spread: tuple[float, float]  # min, max over repeats
    repeats: int
    repeat_joules: list[float] = field(default_factory=list)  # per generation, kept set
    spread_ratio: float = 1.0  # max/min of repeat_joules (inf when a window read 0 J)
    attempts: int = 1  # sets of repeats measured (1 + re-measures)
    unstable: bool = False  # even the best set spread more than max_spread


@dataclass
class EvalResult:
    """A sweep: per batch size, the best, idle power and how it was measured."""

    batches: list[BatchResult]
    idle_w: float | None
    method: str
    device: str
    dtype: str
    prompt_tokens: int
    new_tokens: int
    stopped: str | None = None  # why the sweep ended early
    vocab_size: int | None = None  # read from the logits
    kv_cache: bool | None = None  # False: each step recomputed the context; None: unknown
    context_tokens: int | None = None  # the model's longest context, when it says
    cropped: bool = False  # prompt + new tokens exceeded it: the context was cropped
    generation: str = "forward"  # forward (depth's greedy loop) or generate (the user's)
    max_spread: float | None = None  # the max/min ratio above which a batch is unstable

    @property
    def best(self) -> BatchResult:
        """The most efficient batch size among the stable ones (any, when none is)."""
        stable = [b for b in self.batches if not b.unstable] or self.batches
        return max(stable, key=lambda b: b.tokens_per_wh)

    @property
    def unstable_batches(self) -> list[int]:
        return [b.batch_size for b in self.batches if b.unstable]

    @property
    def tokens_per_wh(self) -> float:
        return self.best.tokens_per_wh

    @property
    def joules_per_token(self) -> float:
        return self.best.joules / self.best.tokens

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(tokens_per_wh=self.tokens_per_wh, joules_per_token=self.joules_per_token,
                   best_batch_size=self.best.batch_size, best_unstable=self.best.unstable,
                   unstable_batches=self.unstable_batches)
        return out


Reader = Callable[[], Mapping[str, float]]


def _total(read: Reader) -> float:
    return float(sum(read().values()))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _window(run: Callable[[], None], k: int, read: Reader, device: torch.device
            ) -> tuple[float, float]:
    """(joules, seconds) of `run` repeated k times, synchronized at both edges."""
    _sync(device)
    j0, t0 = _total(read), time.perf_counter()
    for _ in range(k):
        run()
    _sync(device)
    return _total(read) - j0, time.perf_counter() - t0


def _repeats_for(run: Callable[[], None], min_window_s: float, device: torch.device) -> int:
    _sync(device)
    t0 = time.perf_counter()
    run()
    _sync(device)
    once = max(time.perf_counter() - t0, 1e-6)
    return max(1, math.ceil(min_window_s / once))


PRIME_S = 0.2  # two periods of depth's samplers: a lazily started one has caught up by then


def prime(read: Reader) -> None:
    """Reads the meter once and lets it settle, before any window is timed.

    A meter may start on its first read and only then integrate the energy since its
    creation (depth's estimate sampler does); without this, the first window (idle or
    prefill) would be charged with everything before it."""
    read()
    time.sleep(PRIME_S)


def idle_power_w(read: Reader, seconds: float, device: torch.device) -> float | None:
    """Mean power with nothing running for `seconds` (``None`` for 0 s)."""
    if seconds <= 0:
        return None
    _sync(device)
    j0, t0 = _total(read), time.perf_counter()
    time.sleep(seconds)
    return (_total(read) - j0) / (time.perf_counter() - t0)


def measure(model: Any, read: Reader, config: EvalConfig, vocab_size: int | None = None,
            device: torch.device | str = "cpu", method: str = "unknown",
            progress: Callable[[str], None] | None = None, context_tokens: int | None = None,
            kv_cache: bool | None = None) -> EvalResult:
    """Sweeps `config.batch_sizes`, reading cumulative joules with `read` (an
    `EnergyMeter`'s ``read``); returns tokens/Wh per batch size.

    Args:
        model: A model (see the module's docstring), or a `depth.serving.adapters.Runner`
            (e.g. a `GenerateRunner` around a callable).
        vocab_size: Token ids of the random prompts are below it (default: the logits').
        context_tokens: The model's longest context (default: what the model says).
        kv_cache: ``False`` recomputes the context even for a model with a cache.
    """
    runner = (model if isinstance(model, Runner)
              else runner_for(model, context=context_tokens, kv_cache=kv_cache))
    device = torch.device(device)
    if isinstance(runner, RecomputeRunner) and isinstance(runner.model, torch.nn.Module):
        runner.model = runner.model.to(device=device, dtype=DTYPES[config.dtype]).eval()
    if isinstance(runner, RecomputeRunner):  # wrong logits would be measured silently
        with torch.inference_mode():
            runner.check(torch.zeros(2, config.prompt_tokens, dtype=torch.long,
                                     device=device))
    if vocab_size is None:
        if not isinstance(runner, RecomputeRunner):
            raise ValueError("give vocab_size with a generate callable (depth cannot read "
                             "it from logits it never sees)")
        with torch.inference_mode():
            vocab_size = runner.vocab_size(device)
    context = getattr(runner, "context", None)
    prime(read)
    idle_w = idle_power_w(read, config.idle_s, device)
    generator = torch.Generator().manual_seed(config.seed)
    results: list[BatchResult] = []
    stopped = None
    for batch_size in config.batch_sizes:
        prompt = torch.randint(0, vocab_size, (batch_size, config.prompt_tokens),
                               generator=generator).to(device)
        try:
            with torch.inference_mode():
                result = _measure_batch(runner, prompt, read, config, device, idle_w)
        except torch.OutOfMemoryError:
            stopped = f"batch size {batch_size} does not fit in memory"
            if device.type == "cuda":
                torch.cuda.empty_cache()
            break
        results.append(result)
        if progress is not None:
            flag = (f"; UNSTABLE: repeats spread "
                    f"{spread_text(result.spread_ratio, config.max_spread)} "
                    f"{attempts_text(result.attempts)}" if result.unstable else "")
            progress(f"batch {batch_size:>4}: {result.tokens_per_wh:,.0f} tokens/Wh "
                     f"({result.joules:.3g} J for {result.tokens} tokens{flag})")
    if not results:
        raise ValueError(f"no batch size could be measured: {stopped}")
    return EvalResult(batches=results, idle_w=idle_w, method=method, device=str(device),
                      dtype=config.dtype, prompt_tokens=config.prompt_tokens,
                      new_tokens=config.new_tokens, stopped=stopped, vocab_size=vocab_size,
                      kv_cache=runner.kv_cache, context_tokens=context,
                      cropped=context is not None
                      and config.prompt_tokens + config.new_tokens > context,
                      generation="forward" if runner.splits else "generate",
                      max_spread=config.max_spread)


def _measure_batch(runner: Any, prompt: torch.Tensor, read: Reader, config: EvalConfig,
                   device: torch.device, idle_w: float | None) -> BatchResult:
    if runner.splits:
        state0 = runner.start(prompt)  # untimed: the state every decode window starts from

        def prefill() -> None:
            runner.prefill(prompt)

        def decode() -> None:
            runner.decode(state0, config.new_tokens)

        pieces: list[Callable[[], None]] = [prefill, decode]
    else:
        pieces = [lambda: runner.generate(prompt, config.new_tokens)]
    for piece in pieces:
        piece()  # warm-up
    ks = [_repeats_for(piece, config.min_window_s, device) for piece in pieces]
    tokens = prompt.size(0) * config.new_tokens

    def one_set() -> list[list[tuple[float, float]]]:
        rows = []  # per repeat: (joules, seconds) per piece, per generation
        for _ in range(config.repeats):
            rows.append([(j / k, s / k) for piece, k in zip(pieces, ks)
                         for j, s in [_window(piece, k, read, device)]])
        return rows

    attempts, kept = 0, None
    while attempts <= config.remeasures:
        attempts += 1
        rows = one_set()
        ratio = spread_ratio([sum(j for j, _ in row) for row in rows])
        if kept is None or ratio < kept[0]:
            kept = (ratio, rows)
        if ratio <= config.max_spread:
            break
    ratio, rows = kept
    per = [(sum(j for j, _ in row), sum(s for _, s in row)) for row in rows]  # per generation
    rates = [tokens / (j / J_PER_WH) if j > 0 else math.inf for j, _ in per]
    joules = statistics.median(j for j, _ in per)
    seconds = statistics.median(s for _, s in per)
    net = None
    if idle_w is not None and joules - idle_w * seconds > 0:
        net = tokens / ((joules - idle_w * seconds) / J_PER_WH)
    return BatchResult(
        batch_size=prompt.size(0), tokens=tokens, joules=joules, seconds=seconds,
        tokens_per_wh=tokens / (joules / J_PER_WH) if joules > 0 else math.inf,
        prefill_joules=statistics.median(r[0][0] for r in rows) if runner.splits else None,
        decode_joules=statistics.median(r[1][0] for r in rows) if runner.splits else None,
        net_tokens_per_wh=net, tokens_per_wh_spread=(min(rates), max(rates)),
        repeats=config.repeats, repeat_joules=[j for j, _ in per], spread_ratio=ratio,
        attempts=attempts, unstable=ratio > config.max_spread)


def spread_ratio(joules: Sequence[float]) -> float:
    """max/min of the repeats' joules; infinite when one read no energy at all."""
    low = min(joules)
    return max(joules) / low if low > 0 else math.inf


def sweep_sizes(requested: Sequence[int] | None, up_to: int = 64) -> list[int]:
    """The default sweep 1, 4, 16, 64, ... (x4) up to `up_to`, or `requested`."""
    if requested:
        return list(requested)
    sizes, b = [], 1
    while b <= up_to:
        sizes.append(b)
        b *= 4
    return sizes
