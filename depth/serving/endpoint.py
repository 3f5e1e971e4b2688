"""Inference tokens per Wh of a model *served* by an OpenAI-compatible server (vLLM, TGI,
llama.cpp, ``transformers serve``) on this machine: a sweep of concurrent streams.

How one concurrency c is measured:

1. c client threads send ``/v1/completions`` requests back to back (a closed loop: each
   stream sends its next request when its last one is answered), every request with the
   same prompt (``prompt_tokens`` long, calibrated once from the server's own ``usage``)
   and ``max_tokens = new_tokens``; servers that take vLLM's ``ignore_eos``/``min_tokens``
   get them, so that every request generates exactly ``new_tokens``.
2. Warm-up: the first c answers are not timed (every stream has then been in flight).
3. *Windows*: the meter is read at the moment an answer arrives, and again at the first
   answer after at least ``min_window_s`` and at least c answers. Windows follow each other
   with the streams never pausing: the server is in its steady state. Tokens of a window
   are the ``usage.completion_tokens`` of the answers that arrived in it, never assumed:
   at concurrency 1 a window holds whole requests exactly; above, the work in flight at
   its start (counted, not metered) and at its end (metered, not counted) even out.
4. ``repeats`` windows make a set; the set is measured again (at most ``remeasures``
   times) when its windows' J/token spread more than ``max_spread`` (max/min); the least
   spread set is kept, flagged ``unstable`` if even it spreads.

Idle power is measured first, with no request in flight. The meter sees devices, not the
server: what it covers (whole GPUs, the CPU package, or an estimate of one process) is
part of the result, see `depth.serving.endpoint_eval`.
"""

from __future__ import annotations

import json
import math
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from depth.serving.inference import MAX_WINDOW_S, PRIME_S, spread_ratio
from depth.serving.physics import J_PER_WH

Reader = Callable[[], Mapping[str, float]]
PROMPT_WORD = " the"  # one token in GPT-2-style BPEs; the calibration finds the real count
VLLM_EXTRAS = ("ignore_eos", "min_tokens")


@dataclass
class EndpointConfig:
    """What `measure_endpoint` sweeps.

    Attributes:
        concurrency: Concurrent streams to measure, in order.
        prompt_tokens: Prompt length the prompt is calibrated to (from ``usage``).
        new_tokens: ``max_tokens`` of every request.
        repeats: Windows per set (>= 3 for a spread).
        min_window_s: Shortest window.
        idle_s: Seconds of idle power measured first (0: none).
        max_spread: Largest max/min of the windows' J/token that counts as stable.
        remeasures: How many times an unstable set is measured again.
        request_timeout_s: Longest wait for one answer before the sweep gives up.
    """

    concurrency: list[int] = field(default_factory=lambda: [1, 4, 16, 64])
    prompt_tokens: int = 64
    new_tokens: int = 64
    repeats: int = 3
    min_window_s: float = 0.5
    idle_s: float = 2.0
    max_spread: float = 1.25
    remeasures: int = 2
    request_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        if not self.concurrency or any(not 1 <= c <= 4096 for c in self.concurrency):
            raise ValueError(f"concurrency must be ints from 1 to 4096; got {self.concurrency}")
        if self.prompt_tokens < 1 or self.new_tokens < 1:
            raise ValueError("prompt_tokens and new_tokens must be >= 1")
        if self.repeats < 1 or self.remeasures < 0:
            raise ValueError("repeats must be >= 1 and remeasures >= 0")
        if not (0 <= self.min_window_s <= MAX_WINDOW_S and 0 <= self.idle_s <= MAX_WINDOW_S):
            raise ValueError(f"min_window_s and idle_s must be 0 to {MAX_WINDOW_S:g} s")
        if not self.max_spread > 1:
            raise ValueError(f"max_spread must be > 1 (a max/min ratio); got {self.max_spread}")
        if not 0 < self.request_timeout_s <= MAX_WINDOW_S:
            raise ValueError(f"request_timeout_s must be > 0 and <= {MAX_WINDOW_S:g}")


class Client:
    """``POST {endpoint}/completions`` with the standard library; answers' ``usage`` only.

    Args:
        endpoint: The API base, e.g. ``http://127.0.0.1:8000/v1``.
        model_name: The ``model`` field the server expects.
        timeout_s: Longest wait for one answer.
    """

    def __init__(self, endpoint: str, model_name: str, timeout_s: float = 300.0) -> None:
        self.url = endpoint.rstrip("/") + "/completions"
        self.model_name = model_name
        self.timeout_s = timeout_s
        self.extras: dict[str, Any] = {}

    def usage(self, prompt: str, max_tokens: int) -> dict[str, int]:
        """The ``usage`` of one greedy completion (``completion_tokens``, ``prompt_tokens``).

        Raises:
            ValueError: One line: the server refused, did not answer, or sent no usage.
        """
        body = {"model": self.model_name, "prompt": prompt, "max_tokens": max_tokens,
                "temperature": 0, "stream": False, **self.extras}
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:
                data = json.loads(answer.read())
        except urllib.error.HTTPError as err:
            raise ValueError(f"{self.url} answered HTTP {err.code}: "
                             f"{_detail(err)[:200]}") from None
        except (OSError, ValueError) as err:  # refused, timed out, not JSON
            raise ValueError(f"{self.url}: no answer ({err})") from None
        usage = data.get("usage") if isinstance(data, dict) else None
        try:
            return {"completion_tokens": int(usage["completion_tokens"]),
                    "prompt_tokens": int(usage["prompt_tokens"])}
        except (TypeError, KeyError, ValueError):
            raise ValueError(f"{self.url} sent no usage with its answer: depth counts tokens "
                             "from usage.completion_tokens, so it cannot measure this "
                             "server") from None

    def probe(self, new_tokens: int) -> bool:
        """Asks once with vLLM's ``ignore_eos``/``min_tokens`` (exactly `new_tokens` per
        request); keeps them when the server takes them. Returns whether it did."""
        self.extras = {"ignore_eos": True, "min_tokens": new_tokens}
        try:
            self.usage("Hello", 1)
            return True
        except ValueError as err:
            if not any(name in str(err) for name in VLLM_EXTRAS):
                raise
        self.extras = {}  # a strict server (422: unexpected fields): EOS may end early
        self.usage("Hello", 1)
        return False


def _detail(err: urllib.error.HTTPError) -> str:
    try:
        text = err.read().decode("utf-8", "replace")
    except OSError:
        return str(err.reason)
    return " ".join(text.split()) or str(err.reason)


def calibrate_prompt(client: Client, prompt_tokens: int, tries: int = 6) -> tuple[str, int]:
    """A prompt of about `prompt_tokens` tokens as the server counts them (its ``usage``,
    after its own tokenizer), and that count."""
    words, best = prompt_tokens, None
    for _ in range(tries):
        prompt = PROMPT_WORD * words
        counted = client.usage(prompt, 1)["prompt_tokens"]
        if best is None or abs(counted - prompt_tokens) < abs(best[1] - prompt_tokens):
            best = (prompt, counted)
        if counted == prompt_tokens:
            break
        guess = max(1, round(words * prompt_tokens / max(counted, 1)))
        words = guess if guess != words else max(1, words + (1 if counted < prompt_tokens
                                                               else -1))
    assert best is not None
    return best


class Streams:
    """c closed-loop streams of identical requests; every answer's arrival is kept.

    Attributes:
        answers: (arrival time, completion tokens, prompt tokens), in arrival order.
    """

    def __init__(self, send: Callable[[], dict[str, int]], concurrency: int,
                 timeout_s: float) -> None:
        self._send = send
        self._timeout_s = timeout_s
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._error: Exception | None = None
        self.answers: list[tuple[float, int, int]] = []
        self._threads = [threading.Thread(target=self._loop, name=f"depth-stream-{i}",
                                          daemon=True) for i in range(concurrency)]
        for thread in self._threads:
            thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                usage = self._send()
            except Exception as err:  # noqa: BLE001 - handed to the measuring thread
                with self._cond:
                    self._error = self._error or err
                    self._cond.notify_all()
                return
            with self._cond:
                self.answers.append((time.perf_counter(), usage["completion_tokens"],
                                     usage["prompt_tokens"]))
                self._cond.notify_all()

    def wait_edge(self, since: int, least: int, not_before: float,
                  read: Reader) -> tuple[int, float, float]:
        """Waits for the first answer that arrives at or after `not_before` with at least
        `least` answers after index `since`, and reads the meter then; returns (answers so
        far, that time, the joules read)."""
        with self._cond:
            seen = len(self.answers)
            while True:
                if self._error is not None:  # a stream failed before this wait began
                    raise ValueError(str(self._error))
                woken = self._cond.wait(timeout=self._timeout_s)
                if self._error is not None:
                    raise ValueError(str(self._error))
                if not woken:
                    raise ValueError(f"no answer from the server in {self._timeout_s:g} s "
                                     "(give --request-timeout-s, or lower --concurrency)")
                n, now = len(self.answers), time.perf_counter()
                if n > seen and n - since >= least and now >= not_before:
                    return n, now, _total(read)  # under the lock: no answer slips between
                seen = n

    def stop(self) -> None:
        """Lets every stream finish the request it is in, and sends no more."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self._timeout_s)


def _total(read: Reader) -> float:
    return float(sum(read().values()))


@dataclass
class Window:
    """One metered window: its joules, seconds and the answers that arrived in it."""

    joules: float
    seconds: float
    tokens: int
    prompt_tokens: int
    requests: int

    @property
    def j_per_token(self) -> float:
        return self.joules / self.tokens if self.tokens else math.inf


def measure_concurrency(client: Client, prompt: str, read: Reader, concurrency: int,
                        config: EndpointConfig, idle_w: float | None) -> dict[str, Any]:
    """One row of the sweep (see the module's docstring), JSON-ready."""
    streams = Streams(lambda: client.usage(prompt, config.new_tokens), concurrency,
                      config.request_timeout_s)
    try:
        n, t, j = streams.wait_edge(0, concurrency, 0.0, read)  # warm-up, then the first edge
        attempts, kept = 0, None
        while attempts <= config.remeasures:
            attempts += 1
            windows = []
            for _ in range(config.repeats):
                n1, t1, j1 = streams.wait_edge(n, concurrency, t + config.min_window_s, read)
                arrived = streams.answers[n:n1]
                windows.append(Window(j1 - j, t1 - t, sum(a[1] for a in arrived),
                                      sum(a[2] for a in arrived), n1 - n))
                n, t, j = n1, t1, j1
            ratio = spread_ratio([w.j_per_token for w in windows])
            if kept is None or ratio < kept[0]:
                kept = (ratio, windows)
            if ratio <= config.max_spread:
                break
    finally:
        streams.stop()
    ratio, windows = kept
    return _row(concurrency, windows, ratio, attempts, config, idle_w)


def _row(concurrency: int, windows: Sequence[Window], ratio: float, attempts: int,
         config: EndpointConfig, idle_w: float | None) -> dict[str, Any]:
    tokens = sum(w.tokens for w in windows)
    joules = sum(w.joules for w in windows)
    seconds = sum(w.seconds for w in windows)
    requests = sum(w.requests for w in windows)
    rates = [w.tokens / (w.joules / J_PER_WH) if w.joules > 0 else math.inf for w in windows]
    net = None
    if idle_w is not None and joules - idle_w * seconds > 0:
        net = tokens / ((joules - idle_w * seconds) / J_PER_WH)
    return {
        "concurrency": concurrency, "batch_size": concurrency,  # the key amortize/report read
        "requests": requests, "tokens": tokens, "joules": joules, "seconds": seconds,
        "tokens_per_wh": tokens / (joules / J_PER_WH) if joules > 0 else math.inf,
        "tokens_per_second": tokens / seconds if seconds > 0 else None,
        "net_tokens_per_wh": net, "tokens_per_wh_spread": (min(rates), max(rates)),
        "prompt_tokens_per_request": sum(w.prompt_tokens for w in windows) / max(requests, 1),
        "completion_tokens_per_request": tokens / max(requests, 1),
        "prefill_joules": None, "decode_joules": None,  # a server does not show them apart
        "repeats": config.repeats, "repeat_joules": [w.joules for w in windows],
        "repeat_tokens": [w.tokens for w in windows], "spread_ratio": ratio,
        "attempts": attempts, "unstable": ratio > config.max_spread}


def idle_power_w(read: Reader, seconds: float) -> float | None:
    """Mean power of the metered devices with no request in flight (``None`` for 0 s)."""
    if seconds <= 0:
        return None
    j0, t0 = _total(read), time.perf_counter()
    time.sleep(seconds)
    return (_total(read) - j0) / (time.perf_counter() - t0)


def measure_endpoint(client: Client, read: Reader, config: EndpointConfig,
                     progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Idle power, then the concurrency sweep; one JSON-ready object (see `depth eval`)."""
    fixed_length = client.probe(config.new_tokens)
    prompt, prompt_tokens = calibrate_prompt(client, config.prompt_tokens)
    read()
    time.sleep(PRIME_S)  # a meter started by its first read has caught up (inference.prime)
    idle_w = idle_power_w(read, config.idle_s)
    rows: list[dict[str, Any]] = []
    stopped = None
    for concurrency in config.concurrency:
        try:
            row = measure_concurrency(client, prompt, read, concurrency, config, idle_w)
        except ValueError as err:
            if not rows:
                raise
            stopped = f"concurrency {concurrency}: {err}"
            break
        rows.append(row)
        if progress is not None:
            flag = " UNSTABLE" if row["unstable"] else ""
            progress(f"concurrency {concurrency:>4}: {row['tokens_per_wh']:,.0f} tokens/Wh "
                     f"({row['joules']:.3g} J for {row['tokens']} tokens in "
                     f"{row['requests']} answers{flag})")
    stable = [r for r in rows if not r["unstable"]] or rows
    best = max(stable, key=lambda r: r["tokens_per_wh"])
    return {"batches": rows, "idle_w": idle_w, "prompt_tokens": prompt_tokens,
            "prompt_tokens_requested": config.prompt_tokens, "new_tokens": config.new_tokens,
            "fixed_output_length": fixed_length, "stopped": stopped,
            "tokens_per_wh": best["tokens_per_wh"],
            "joules_per_token": best["joules"] / best["tokens"],
            "best_batch_size": best["concurrency"], "best_concurrency": best["concurrency"],
            "best_unstable": best["unstable"],
            "unstable_batches": [r["concurrency"] for r in rows if r["unstable"]]}
