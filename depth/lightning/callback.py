"""`DepthCallback`: cumulative joules per optimizer step, embedded in every checkpoint.

A thin Lightning layer over `depth.accounting.ledger`. What it adds to the ledger is Lightning's:
when an optimizer step ends (``global_step`` advanced: correct under gradient accumulation
and manual optimization), which device each rank uses, combining ranks with one small
collective at log and checkpoint points, loggers, checkpoints, resume and the crash
sidecar.
"""

from __future__ import annotations

import math
import os
import platform
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from depth.accounting.ledger import BridgingReader, Ledger, Point, utc_now
from depth.meters import METER_NAMES, EnergyMeter, MeterUnavailable, auto_meter, make_meter
from depth.record.provenance import CHECKPOINT_KEY, Provenance, weights_sha256
from depth.lightning.sidecar import SidecarWriter, read_sidecar, sidecar_path
from depth.tracking.spool import Spool, SpoolSink
from depth.accounting.tokens import token_counter
from depth.tracking.store import (
    BufferedMetricWriter,
    MetricWriterProcess,
    default_tracking_uri,
    end_run,
    is_mlflow_logger,
    open_run,
    redact,
    tracking_uri_of,
    unreachable,
)

SYNC_MODES = ("none", "log", "step")
MLFLOW_WRITERS = ("auto", "process", "thread")
Observation = tuple[float, dict[str, float]]


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo, else the platform's word for it)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def config_sha256(trainer: pl.Trainer, module: pl.LightningModule) -> str:
    """Digest of the training configuration: module and datamodule hyperparameters and the
    trainer settings that change what is computed."""
    import hashlib
    import json

    datamodule = getattr(trainer, "datamodule", None)
    config = {
        "module": type(module).__qualname__, "hparams": dict(module.hparams),
        "datamodule_hparams": dict(getattr(datamodule, "hparams", {}) or {}),
        "trainer": {k: str(getattr(trainer, k, None)) for k in (
            "max_epochs", "max_steps", "accumulate_grad_batches", "precision",
            "gradient_clip_val", "world_size", "num_nodes")},
    }
    text = json.dumps(config, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


class _DirectSink:
    """A Lightning logger other than MLflow: its own ``log_metrics`` (they buffer)."""

    def __init__(self, logger: Any):
        self.logger = logger

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.logger.log_metrics(dict(metrics), step=step)

    def flush(self, wait: bool = False) -> bool:
        save = getattr(self.logger, "save", None)
        if callable(save):
            save()
        return True

    def close(self) -> None:
        self.flush()


class DepthCallback(Callback):
    """Logs cumulative joules at every optimizer step and embeds provenance in checkpoints.

    Args:
        meter: ``"auto"`` (the best sources for the devices this rank uses), a name from
            `depth.meters.METER_NAMES`, or any `EnergyMeter`.
        log_every_n_steps: One point every this many optimizer steps (independent of
            ``Trainer(log_every_n_steps)``). Between points, values are per-interval means.
        tokens_per_batch: Tokens per batch: an int, a callable ``batch -> int``, or
            ``None`` to infer them from an integer B x T token tensor in the batch (no
            token metrics when there is none).
        sync: CUDA synchronization before reading the meter: ``"none"`` (never stalls),
            ``"log"`` (at log points and checkpoints), ``"step"`` (every optimizer step).
        log_per_device: Log cumulative joules per device; default: when there are several.
        sidecar: Keep the crash sidecar beside the checkpoints.
        sidecar_interval_s: How often the sidecar is rewritten.
        flush_interval_s: How often buffered MLflow points are sent.
        max_lag_s: Step boundaries wait at most this long for a counter update.
        mlflow_writer: Where MLflow points are written. ``"process"``: a separate, niced
            writer process, so MLflow's ~0.2 ms of Python per metric row never competes for
            the training process's GIL (best when CPU cores are idle, as when training on a
            GPU). ``"thread"``: a daemon thread here (best when torch already uses every
            core, as when training on the CPU). ``"auto"``: process when training on a GPU,
            when there are more cores than torch threads, or for a tracking server (the
            process notices an outage within a second), else thread.
        tracking: Without an ``MLFlowLogger`` attached, open a run of our own on
            ``MLFLOW_TRACKING_URI`` or the default store ``sqlite:///mlruns/mlflow.db``
            (``False``: no MLflow unless a logger brings it).
        experiment_name: The experiment of that own run.
        parent: The model this one is fine-tuned or distilled from: a checkpoint path,
            an MLflow source (``runs:/``, ``models:/``, ``m-``) or a record. Its record is
            embedded (digest-checked) and its depth added to this model's. By default, a
            parent whose weights were loaded with `depth.record.lineage.load_parent_weights`.
        country_iso_code: Where the energy was drawn (ISO 3166 alpha-3, e.g. ``"FRA"``), for
            the carbon estimate; CodeCarbon's world average when not given.
        region: A region CodeCarbon knows within that country (e.g. ``"california"``).
        pue: The facility's power usage effectiveness (>= 1), when known: the record then
            also carries facility energy, and carbon is computed on it.
        log_checkpoints: Also upload each checkpoint file that a ``ModelCheckpoint`` saves
            to its LoggedModel (under ``checkpoint/``), off the training thread.
        spool_dir: Where metrics and records that a tracking server cannot take now are
            kept for ``depth sync`` (default: ``depth-spool/`` under the trainer's
            ``default_root_dir``).
        tracking_retry_s: How long a batch is retried, off the training thread, when a
            store that was working starts refusing writes, before it goes to the spool.

    Metrics: ``energy/joules`` (whole history), ``energy/step_joules``, ``energy/watts``,
    ``energy/joules_per_token`` (when tokens are known), ``energy/joules/<device>``.
    """

    def __init__(
        self,
        meter: EnergyMeter | str = "auto",
        *,
        log_every_n_steps: int = 1,
        tokens_per_batch: int | Callable[[Any], int] | None = None,
        sync: str = "none",
        log_per_device: bool | None = None,
        sidecar: bool = True,
        sidecar_interval_s: float = 1.0,
        flush_interval_s: float = 1.0,
        max_lag_s: float = 1.0,
        mlflow_writer: str = "auto",
        tracking: bool = True,
        experiment_name: str = "depth",
        parent: str | Path | Mapping[str, Any] | None = None,
        country_iso_code: str | None = None,
        region: str | None = None,
        pue: float | None = None,
        log_checkpoints: bool = False,
        spool_dir: str | Path | None = None,
        tracking_retry_s: float = 30.0,
    ):
        if isinstance(meter, str):
            if meter not in METER_NAMES:
                raise ValueError(f"meter must be one of {', '.join(METER_NAMES)} or an "
                                 f"EnergyMeter; got {meter!r}")
        elif not all(hasattr(meter, a) for a in ("method", "devices", "read", "close")):
            raise TypeError("meter must have method, devices(), read() and close() "
                            f"(the EnergyMeter protocol); got {type(meter).__name__}")
        if isinstance(log_every_n_steps, bool) or not isinstance(log_every_n_steps, int) \
                or log_every_n_steps < 1:
            raise ValueError(f"log_every_n_steps must be an int >= 1; got {log_every_n_steps!r}")
        if sync not in SYNC_MODES:
            raise ValueError(f"sync must be one of {', '.join(SYNC_MODES)}; got {sync!r}")
        if tokens_per_batch is not None and not callable(tokens_per_batch) and (
                isinstance(tokens_per_batch, bool) or not isinstance(tokens_per_batch, int)
                or tokens_per_batch < 1):
            raise ValueError("tokens_per_batch must be a positive int, a callable(batch) -> "
                             f"int, or None; got {tokens_per_batch!r}")
        for name, value in (("sidecar_interval_s", sidecar_interval_s),
                            ("tracking_retry_s", tracking_retry_s),
                            ("flush_interval_s", flush_interval_s), ("max_lag_s", max_lag_s)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0; got {value!r}")
        if mlflow_writer not in MLFLOW_WRITERS:
            raise ValueError(f"mlflow_writer must be one of {', '.join(MLFLOW_WRITERS)}; "
                             f"got {mlflow_writer!r}")
        if pue is not None and not pue >= 1.0:
            raise ValueError(f"pue must be >= 1 (facility energy over IT energy); got {pue!r}")
        self.country_iso_code, self.region, self.pue = country_iso_code, region, pue
        self.log_checkpoints = bool(log_checkpoints)
        self.tracking_retry_s = tracking_retry_s
        self.spool_dir = Path(spool_dir) if spool_dir is not None else None
        self._awaiting_files: list[tuple[str, int, float]] = []  # (record digest, step, time)
        self._own_spool: Spool | None = None
        self._intensity: dict[str, Any] | None = None
        self._parameters: int | None = None
        self._config_sha256: str | None = None
        self.mlflow_writer = mlflow_writer
        self.tracking = bool(tracking)
        self.experiment_name = experiment_name
        self.own_run: tuple[str, str] | None = None  # (tracking URI, run id)
        self.parent_spec = parent
        self.parent: dict[str, Any] | None = None
        self._failed = False
        self.meter_spec = meter
        self.log_every_n_steps = log_every_n_steps
        self.sync = sync
        self.log_per_device = log_per_device
        self.use_sidecar = sidecar
        self.sidecar_interval_s = sidecar_interval_s
        self.flush_interval_s = flush_interval_s
        self._count_tokens = token_counter(tokens_per_batch)
        self.ledger = Ledger(max_lag_s=max_lag_s)
        self.meter: EnergyMeter | None = None
        self._owns_meter = False
        self._reader: BridgingReader | None = None
        self._trainer: pl.Trainer | None = None
        self._loaded = False
        self._sinks: list[Any] = []
        self._sidecar: SidecarWriter | None = None
        self._last_state: dict[str, Any] | None = None
        self._pending_tokens: int | None = 0
        self._last_global_step = 0
        self._world = 1
        self._rank = 0
        self._local_labels: dict[str, str] = {}  # meter label -> ledger label
        self._rank_labels: list[list[str]] = [[]]
        self._excluded: set[str] = set()
        self._baseline: list[Observation] = []
        self._methods: dict[str, str] = {}
        self._hardware: dict[str, Any] = {}
        self._sidecar_base: dict[str, float] = {}
        self._loaded_saved_unix: float | None = None
        self._loaded_saved_at: str | None = None
        self.logged_models: list[tuple[int, str]] = []  # (step, MLflow LoggedModel id)
        self._latest: Point | None = None
        self._fit_tokens: int | None = 0
        self._fit_joules = 0.0

    # ------------------------------------------------------------------ set-up

    @property
    def state_key(self) -> str:
        return "DepthCallback"

    def _make_meter(self, trainer: pl.Trainer) -> EnergyMeter | None:
        if not isinstance(self.meter_spec, str):
            return self.meter_spec
        local_rank = int(getattr(trainer, "local_rank", 0))
        device = trainer.strategy.root_device
        cpu = "auto" if local_rank == 0 else "off"  # CPU/DRAM once per node
        self._owns_meter = True
        try:
            if self.meter_spec == "auto":
                if device.type == "cuda":
                    return auto_meter([device.index or 0], cpu=cpu)
                return auto_meter(gpu="off", cpu=cpu)
            return make_meter(self.meter_spec)
        except MeterUnavailable as err:
            if local_rank != 0 and cpu == "off":
                return None  # a CPU-only rank on a node whose rank 0 meters the CPU
            raise MeterUnavailable(f"depth: no energy meter for this run: {err}") from None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._trainer = trainer
        self._parameters = sum(p.numel() for p in pl_module.parameters())
        self._config_sha256 = config_sha256(trainer, pl_module)
        if self._intensity is None:
            from depth.record.carbon import grid_intensity

            self._intensity = grid_intensity(self.country_iso_code, self.region)
        if self.parent is None:
            from depth.record.lineage import ATTRIBUTE, check_parent, resolve_parent

            if self.parent_spec is not None:
                self.parent = resolve_parent(self.parent_spec)
            elif getattr(pl_module, ATTRIBUTE, None):
                self.parent = check_parent(getattr(pl_module, ATTRIBUTE), "loaded weights")
        self._world = int(trainer.world_size)
        self._rank = int(trainer.global_rank)
        local_rank = int(getattr(trainer, "local_rank", 0))
        if self.meter is None:
            self.meter = self._make_meter(trainer)
        meter = self.meter
        devices = list(meter.devices()) if meter is not None else []
        if local_rank != 0 and not isinstance(self.meter_spec, str):
            devices = [d for d in devices if not d.startswith(("cpu", "dram"))]
        prefix = f"node{trainer.node_rank}/rank{self._rank}/" if self._world > 1 else ""
        self._local_labels = {d: prefix + d for d in devices}
        methods = getattr(meter, "methods", None)
        local_methods = methods() if callable(methods) else {d: meter.method for d in devices}
        hardware = dict(getattr(meter, "hardware", dict)()) if meter is not None else {}
        uuids = {self._local_labels[g["device"]]: g["uuid"] for g in hardware.get("gpus", [])
                 if g.get("device") in self._local_labels and g.get("uuid")}
        info = {"labels": list(self._local_labels.values()),
                "methods": {self._local_labels[d]: local_methods.get(d, "unknown")
                            for d in devices},
                "uuids": uuids,
                "hardware": hardware, "node": int(trainer.node_rank), "host": platform.node()}
        ranks = self._gather_object(info)
        self._rank_labels = [r["labels"] for r in ranks]
        self._excluded = self._shared_gpus(ranks)
        self._methods = {d: m for r in ranks for d, m in r["methods"].items()
                         if d not in self._excluded}
        self._hardware = {"world_size": self._world, "num_nodes": int(trainer.num_nodes),
                          "cpu_model": cpu_model(),
                          "accelerator": trainer.strategy.root_device.type,
                          "torch": str(torch.__version__),
                          "ranks": [{"node": r["node"], "host": r["host"], **r["hardware"]}
                                    for r in ranks]}
        self._reader = BridgingReader(meter.read if meter is not None else dict, devices,
                                      on_failure=self._warn)
        self._baseline, _ = self._observe(tokens=None, collective=True)

    def _shared_gpus(self, ranks: Sequence[Mapping[str, Any]]) -> set[str]:
        """GPUs metered by two ranks (same UUID): counted once, on the lower rank."""
        seen: dict[str, str] = {}
        excluded: set[str] = set()
        for r in ranks:
            for label, uuid in r["uuids"].items():
                if uuid in seen:
                    excluded.add(label)
                    if self._rank == 0:
                        self._warn(f"{label} is the same GPU as {seen[uuid]} ({uuid}); two "
                                   "ranks share it, so it is counted once")
                else:
                    seen[uuid] = label
        return excluded

    @staticmethod
    def _warn(message: str) -> None:
        warnings.warn(f"depth: {message}", stacklevel=2)

    # ------------------------------------------------------------------ reading

    def _gather_object(self, obj: Any) -> list[Any]:
        if self._world == 1 or not torch.distributed.is_initialized():
            return [obj]
        out: list[Any] = [None] * self._world
        torch.distributed.all_gather_object(out, obj)
        return out

    def _read_local(self) -> tuple[float, dict[str, float]]:
        assert self._reader is not None
        t_s, values = self._reader.read()
        return t_s, {self._local_labels[d]: v for d, v in values.items()}

    def _observe(self, tokens: int | None,
                 collective: bool) -> tuple[list[Observation], int | None]:
        """Reads this rank's meter; with several ranks, gathers every rank's reading."""
        t_s, values = self._read_local()
        if self._world == 1 or not collective:
            return [(t_s, values)], tokens
        width = 2 + max(len(labels) for labels in self._rank_labels)
        row = [t_s, math.nan if tokens is None else float(tokens),
               *[values[label] for label in self._rank_labels[self._rank]]]
        row += [math.nan] * (width - len(row))
        assert self._trainer is not None
        local = torch.tensor(row, dtype=torch.float64, device=self._trainer.strategy.root_device)
        rows = self._trainer.strategy.all_gather(local).reshape(self._world, width).cpu().tolist()
        observations: list[Observation] = []
        total: int | None = 0
        for rank, r in enumerate(rows):
            labels = self._rank_labels[rank]
            observations.append((r[0], {label: r[2 + i] for i, label in enumerate(labels)
                                        if label not in self._excluded}))
            total = None if (total is None or math.isnan(r[1])) else total + int(r[1])
        return observations, total

    def _synchronize(self) -> None:
        assert self._trainer is not None
        device = self._trainer.strategy.root_device
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    # ------------------------------------------------------------------ training

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._reader is None:
            return
        if self._loaded and trainer.ckpt_path:
            self._recover_wasted_work(Path(trainer.ckpt_path).parent)
        self.ledger.begin(trainer.global_step, self._baseline, self._method(), self._hardware,
                          self.sync)
        self._last_global_step = trainer.global_step
        self._pending_tokens = 0
        self._latest, self._fit_tokens, self._fit_joules = None, 0, 0.0
        own = self._baseline[self._rank if len(self._baseline) > 1 else 0][1]
        self._sidecar_base = {d: self.ledger.history_devices[d] - v for d, v in own.items()
                              if d not in self._excluded}
        self._sinks = self._make_sinks(trainer) if trainer.is_global_zero else []
        directory = self._checkpoint_dir(trainer)
        if self.use_sidecar and directory is not None:
            self._sidecar = SidecarWriter(sidecar_path(directory, self._rank),
                                          self._sidecar_snapshot, self.sidecar_interval_s,
                                          on_error=self._sidecar_failed)
            self._sidecar.start()

    def _method(self) -> str:
        return "+".join(sorted(set(self._methods.values()))) or "none"

    @staticmethod
    def _checkpoint_dir(trainer: pl.Trainer) -> Path | None:
        if trainer.ckpt_path:
            return Path(trainer.ckpt_path).parent
        callback = trainer.checkpoint_callback
        dirpath = getattr(callback, "dirpath", None)
        return Path(dirpath) if dirpath else None

    def _writer_kind(self, trainer: pl.Trainer) -> str:
        if self.mlflow_writer != "auto":
            return self.mlflow_writer
        spare_core = (os.cpu_count() or 1) > torch.get_num_threads()
        return "process" if trainer.strategy.root_device.type == "cuda" or spare_core else "thread"

    def _spool(self, trainer: pl.Trainer, uri: str, run_id: str | None) -> Spool:
        directory = self.spool_dir or Path(trainer.default_root_dir) / "depth-spool"
        return Spool(directory, uri, run_id, experiment_name=self.experiment_name)

    def _make_sinks(self, trainer: pl.Trainer) -> list[Any]:
        sinks: list[Any] = []
        kind = self._writer_kind(trainer)
        mlflow_loggers = [lg for lg in trainer.loggers if is_mlflow_logger(lg)]
        sinks += [_DirectSink(lg) for lg in trainer.loggers if not is_mlflow_logger(lg)]
        targets: list[tuple[str, Any]] = [(tracking_uri_of(lg), lg) for lg in mlflow_loggers]
        if not mlflow_loggers and self.tracking:
            targets = [(self.own_run[0] if self.own_run else default_tracking_uri(), None)]
        down = {uri: why for uri in {u for u, _ in targets} if (why := unreachable(uri))}
        for uri, logger in targets:
            if uri in down:  # nothing waits on the server: everything goes to the spool
                run_id = (getattr(logger, "_run_id", None) if logger is not None
                          else self.own_run[1] if self.own_run else None)
                spool = self._spool(trainer, uri, run_id)
                self._warn(f"MLflow tracking server {redact(uri)} is unreachable ({down[uri]}); "
                           f"energy metrics and records are spooled to {spool.directory} (replay "
                           f"with `depth sync {spool.directory}`); checkpoints still carry "
                           "their records")
                sinks.append(SpoolSink(spool))
                continue
            if logger is not None:
                run_id = logger.run_id
            else:
                if self.own_run is None:  # one run for every fit of this callback
                    self.own_run = open_run(self.experiment_name, tracking_uri=uri)
                run_id = self.own_run[1]
            spool = self._spool(trainer, uri, run_id)
            if logger is None:
                self._own_spool = spool
            remote = uri.startswith(("http://", "https://"))  # fails fast only in a process
            if kind == "process" or (self.mlflow_writer == "auto" and remote):
                sinks.append(MetricWriterProcess(uri, run_id, self.flush_interval_s, spool,
                                                 retry_s=self.tracking_retry_s))
            else:
                from mlflow import MlflowClient

                sinks.append(BufferedMetricWriter(MlflowClient(uri), run_id,
                                                  self.flush_interval_s, spool))
        return sinks

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._reader is None or not self.ledger.is_open:
            return
        tokens = self._count_tokens(batch)
        self._pending_tokens = (None if tokens is None or self._pending_tokens is None
                                else self._pending_tokens + tokens)
        step = trainer.global_step
        if step == self._last_global_step:
            return  # a gradient-accumulation micro-batch: no optimizer step yet
        self._last_global_step = step
        log = step % self.log_every_n_steps == 0
        if self._world > 1 and not log:
            return  # ranks are combined only at log points; tokens keep accumulating
        if self.sync == "step" or (self.sync == "log" and log):
            self._synchronize()
        observations, tokens = self._observe(self._pending_tokens, collective=True)
        self._pending_tokens = 0
        self.ledger.step(step, observations, tokens, log=log)
        self._emit(trainer)

    def progress(self) -> dict[str, float]:
        """The latest energy figures, for a progress bar: ``J`` (cumulative joules), ``W``
        (mean watts since the previous point) and ``tok/Wh`` (training tokens per Wh over
        this fit, when tokens are known)."""
        point = self._latest
        if point is None:
            return {}
        out = {"J": round(point.joules, 1), "W": round(point.watts, 1)}
        if self._fit_tokens is not None and self._fit_joules > 0:
            out["tok/Wh"] = round(self._fit_tokens / (self._fit_joules / 3600.0))
        return out

    def _emit(self, trainer: pl.Trainer) -> None:
        points = self.ledger.pop_points()
        if points:
            self._latest = points[-1]
            for point in points:
                self._fit_joules += point.interval_joules
                self._fit_tokens = (None if point.tokens is None or self._fit_tokens is None
                                    else self._fit_tokens + point.tokens)
        if not points or not trainer.is_global_zero:
            return
        per_device = (self.log_per_device if self.log_per_device is not None
                      else len(self._methods) > 1)
        for point in points:
            metrics = self._metrics(point, per_device)
            for sink in self._sinks:
                sink.log(metrics, point.step)

    @staticmethod
    def _metrics(point: Point, per_device: bool) -> dict[str, float]:
        metrics = {"energy/joules": point.joules, "energy/step_joules": point.step_joules,
                   "energy/watts": point.watts}
        if point.joules_per_token is not None:
            metrics["energy/joules_per_token"] = point.joules_per_token
        if per_device:
            metrics.update({f"energy/joules/{d}": j for d, j in point.devices.items()})
        return metrics

    def _flush(self, wait: bool = False) -> None:
        """Hands queued points to the writers; with `wait`, until they are stored."""
        for sink in self._sinks:
            try:
                sink.flush(wait=wait)
            except Exception as err:  # a logger failing must not stop training
                self._warn(f"flushing {type(sink).__name__} failed: {err}")

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        if self.ledger.is_open:
            if self.sync != "none":
                self._synchronize()
            observations, _ = self._observe(tokens=None, collective=True)
            reading = {d: v for _, values in observations for d, v in values.items()}
            state = self.ledger.state_dict(reading)
        else:
            state = self.ledger.state_dict()
        state["flags"] = self._flags()
        state["saved_unix"] = time.time()
        state["parent"] = self.parent
        self._last_state = state
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.ledger.load_state_dict(state_dict)
        self._loaded = True
        self._loaded_saved_unix = state_dict.get("saved_unix")
        self.parent = self.parent or state_dict.get("parent")
        self._loaded_saved_at = state_dict.get("saved_at")

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        if not (self.ledger.is_open or self.ledger.segments):
            return  # nothing measured (this callback never trained)
        state = self._last_state if self._last_state is not None else self.state_dict()
        self._last_state = None
        digest = (weights_sha256(checkpoint["state_dict"])
                  if trainer.is_global_zero and "state_dict" in checkpoint else None)
        from depth.record.signing import KEY_ID_ENV, signing_key

        record = self.provenance(state, digest).sealed(signing_key(),
                                                       os.environ.get(KEY_ID_ENV) or None)
        checkpoint[CHECKPOINT_KEY] = record
        for sink in self._sinks:  # MLflow: run tags, provenance artifact, a LoggedModel
            publish = getattr(sink, "publish_checkpoint", None)
            if callable(publish):
                publish(record, step=int(state["optimizer_steps"]))
        if self.log_checkpoints and self._sinks:  # the file is written after this hook
            self._awaiting_files.append((record["record_sha256"],
                                         int(state["optimizer_steps"]), time.time()))
        self._flush()

    # ------------------------------------------------------------------ checkpoint files

    def _publish_checkpoint_files(self, trainer: pl.Trainer, final: bool = False) -> None:
        """Queues the upload of checkpoint files written since their records were made.

        Lightning has no hook after a checkpoint file is written, so the files are found
        at the next hook: among the paths the ``ModelCheckpoint`` callbacks report, those
        modified after the record was made, paired with the records in order.
        """
        if not self._awaiting_files:
            return
        since = self._awaiting_files[0][2] - 0.01
        paths = {p for cb in trainer.checkpoint_callbacks
                 for p in (getattr(cb, "best_model_path", ""), getattr(cb, "last_model_path", ""),
                           *getattr(cb, "best_k_models", {}))
                 if p}
        fresh = []
        for path in paths:
            try:
                mtime = os.stat(path).st_mtime
            except OSError:
                continue
            if mtime >= since and not os.path.islink(path):
                fresh.append((mtime, str(path)))
        fresh.sort()
        for (_, path), (digest, step, _) in zip(fresh, self._awaiting_files):
            for sink in self._sinks:
                publish = getattr(sink, "publish_file", None)
                if callable(publish):
                    publish(path, digest, step)
        matched = min(len(fresh), len(self._awaiting_files))
        self._awaiting_files = self._awaiting_files[matched:]
        if final and self._awaiting_files:
            self._warn(f"{len(self._awaiting_files)} checkpoint(s) were saved without a "
                       "ModelCheckpoint (trainer.save_checkpoint): their files are not "
                       "uploaded; their records are")
            self._awaiting_files = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        if self._awaiting_files:
            self._publish_checkpoint_files(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._awaiting_files:
            self._publish_checkpoint_files(trainer)

    def provenance(self, state: Mapping[str, Any], digest: str | None = None) -> Provenance:
        """The record for a ledger state (as saved at a checkpoint)."""
        from depth.record.carbon import carbon_for
        from depth.record.provenance import known_error

        from depth.record.uncertainty import uncertainty

        facility = state["train_joules"] * self.pue if self.pue else None
        by_method: dict[str, float] = {}
        for device, joules in state["devices"].items():
            method = self._methods.get(device, self._method())
            by_method[method] = by_method.get(method, 0.0) + float(joules)
        carbon = (carbon_for(facility or state["train_joules"], self._intensity)
                  if self._intensity else None)
        return Provenance(
            parameters=self._parameters, config_sha256=self._config_sha256,
            known_error=known_error(self._method()), pue=self.pue, facility_joules=facility,
            carbon=carbon, uncertainty=uncertainty(by_method),
            train_joules=state["train_joules"], optimizer_steps=state["optimizer_steps"],
            train_tokens=state["tokens"], devices=dict(state["devices"]),
            method=self._method(), segments=list(state["segments"]),
            wasted_joules=state["wasted_joules"], weights_sha256=digest,
            created=state["saved_at"], hardware=self._hardware, sync=self.sync,
            flags=list(state.get("flags", [])), parent=state.get("parent", self.parent))

    def _flags(self) -> list[str]:
        flags = list(self._reader.flags) if self._reader is not None else []
        flags += list(getattr(self.meter, "flags", list)()) if self.meter is not None else []
        if self._sidecar is not None and self._sidecar.failed:
            flags.append(self._sidecar.failed)
        return list(dict.fromkeys(flags))

    # ------------------------------------------------------------------ crash safety

    def _sidecar_snapshot(self) -> dict[str, Any]:
        _, values = self._read_local()
        return {"schema": 1, "lineage_id": self.ledger.lineage_id, "rank": self._rank,
                "devices": {d: self._sidecar_base[d] + v for d, v in values.items()
                            if d in self._sidecar_base},
                "step": self._last_global_step, "method": self._method(),
                "updated": utc_now(), "updated_unix": time.time()}

    def _sidecar_failed(self, message: str) -> None:
        self._warn(f"{message}; training goes on, the record says so")
        self.ledger.add_flag(message)

    def _recover_wasted_work(self, directory: Path) -> None:
        """Energy spent after the resumed checkpoint by the run that wrote the sidecar."""
        side = read_sidecar(sidecar_path(directory, self._rank))
        own: dict[str, Any] = {"devices": {}, "step": None}
        saved = self._loaded_saved_unix
        if side is not None and side.get("lineage_id") == self.ledger.lineage_id:
            own = {"devices": {d: float(j) - self.ledger.history_devices.get(d, 0.0)
                               for d, j in side["devices"].items()},
                   "step": side.get("step"), "updated": side.get("updated"),
                   "updated_unix": side.get("updated_unix"), "method": side.get("method")}
        ranks = self._gather_object(own)
        devices = {d: j for r in ranks for d, j in r["devices"].items() if j > 0}
        if not devices:
            return
        first = next(r for r in ranks if r["step"] is not None)
        wall_s = max(0.0, (first.get("updated_unix") or 0.0) - saved) if saved else 0.0
        self.ledger.add_wasted(
            start_step=self.ledger.optimizer_steps, end_step=int(first["step"]),
            devices=devices, wall_s=wall_s, started=self._loaded_saved_at or utc_now(),
            ended=first.get("updated"), method=first.get("method") or self._method(),
            note=(f"energy spent after the checkpoint at step {self.ledger.optimizer_steps} "
                  f"by a run that did not continue from it (to step {first['step']}), "
                  "recovered from the crash sidecar; at most ~1 s of it is missing"))

    # ------------------------------------------------------------------ the end

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._reader is None or not self.ledger.is_open:
            return
        if self.sync != "none":
            self._synchronize()
        observations, _ = self._observe(tokens=None, collective=True)
        self.ledger.end(observations, flags=self._flags())
        self._emit(trainer)
        self._flush(wait=True)
        if self._sidecar is not None:
            self._sidecar.stop(final_write=True)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        self._failed = True
        self._flush(wait=True)
        if self._sidecar is not None:
            self._sidecar.stop(final_write=True)
            self._sidecar = None

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._publish_checkpoint_files(trainer, final=True)
        for sink in self._sinks:
            try:
                if isinstance(sink, SpoolSink):
                    sink.close(failed=self._failed)
                else:
                    sink.close()
            except Exception as err:
                self._warn(f"closing {type(sink).__name__} failed: {err}")
            self.logged_models.extend(getattr(sink, "models", []))
        self._sinks = []
        if self.own_run is not None and trainer.is_global_zero:
            status = "FAILED" if self._failed else "FINISHED"
            if unreachable(self.own_run[0]) is None:
                end_run(*self.own_run, failed=self._failed)
            elif self._own_spool is not None:  # the server went away mid-run
                self._own_spool.end(status)
        self._own_spool = None
        if self._sidecar is not None:
            self._sidecar.stop(final_write=False)
            self._sidecar = None
        if self._owns_meter and self.meter is not None:
            self.meter.close()
            self.meter = None
        self._reader = None
