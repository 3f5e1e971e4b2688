"""`CallbackOptions`: what `DepthCallback` takes, typed, documented and checked up front."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from depth.meters import METER_NAMES

SYNC_MODES = ("none", "log", "step")
MLFLOW_WRITERS = ("auto", "process", "thread")
METER_PROTOCOL = ("method", "devices", "read", "close")


@dataclass
class CallbackOptions:
    """The options of a `DepthCallback`, validated when it is made (not at the first step).

    Attributes:
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
        progress_bar: Show the live figures in the Trainer's progress bar (TQDM, Rich, or
            any ``ProgressBar`` that draws ``trainer.progress_bar_metrics``): ``J``
            (cumulative joules of the model's history), ``W`` (mean watts since the previous
            point) and ``tok/Wh`` (training tokens per Wh over this fit), three significant
            digits with an SI prefix (``J=12.3k``), updated when points are settled (at most
            every ``flush_interval_s``). They are drawn only, never sent to a logger.
    """

    meter: Any = "auto"
    log_every_n_steps: int = 1
    tokens_per_batch: int | Callable[[Any], int] | None = None
    sync: str = "none"
    log_per_device: bool | None = None
    sidecar: bool = True
    sidecar_interval_s: float = 1.0
    flush_interval_s: float = 1.0
    max_lag_s: float = 1.0
    mlflow_writer: str = "auto"
    tracking: bool = True
    experiment_name: str = "depth"
    parent: str | Path | Mapping[str, Any] | None = None
    country_iso_code: str | None = None
    region: str | None = None
    pue: float | None = None
    log_checkpoints: bool = False
    spool_dir: str | Path | None = None
    tracking_retry_s: float = 30.0
    progress_bar: bool = True

    def __post_init__(self) -> None:
        meter = self.meter
        if isinstance(meter, str):
            if meter not in METER_NAMES:
                raise ValueError(f"meter must be one of {', '.join(METER_NAMES)} or an "
                                 f"EnergyMeter; got {meter!r}")
        elif not all(hasattr(meter, a) for a in METER_PROTOCOL):
            raise TypeError("meter must have method, devices(), read() and close() "
                            f"(the EnergyMeter protocol); got {type(meter).__name__}")
        n = self.log_every_n_steps
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"log_every_n_steps must be an int >= 1; got {n!r}")
        if self.sync not in SYNC_MODES:
            raise ValueError(f"sync must be one of {', '.join(SYNC_MODES)}; got {self.sync!r}")
        tokens = self.tokens_per_batch
        if tokens is not None and not callable(tokens) and (
                isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1):
            raise ValueError("tokens_per_batch must be a positive int, a callable(batch) -> "
                             f"int, or None; got {tokens!r}")
        for name in ("sidecar_interval_s", "tracking_retry_s", "flush_interval_s", "max_lag_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    0 < value <= 86_400):
                raise ValueError(f"{name} must be a number of seconds, > 0 and at most a day; "
                                 f"got {value!r}")
        for name in ("sidecar", "tracking", "log_checkpoints", "progress_bar"):  # "no": truthy
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False; got {getattr(self, name)!r}")
        if self.log_per_device is not None and not isinstance(self.log_per_device, bool):
            raise TypeError(f"log_per_device must be True, False or None; got "
                            f"{self.log_per_device!r}")
        if not isinstance(self.experiment_name, str) or not self.experiment_name.strip():
            raise ValueError("experiment_name must be a non-empty string; got "
                             f"{self.experiment_name!r}")
        if self.spool_dir is not None:
            if not isinstance(self.spool_dir, (str, Path)):
                raise TypeError(f"spool_dir must be a folder path; got {self.spool_dir!r}")
            folder = Path(self.spool_dir).expanduser()
            existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
            if existing is not None and not existing.is_dir():
                raise ValueError(f"spool_dir must be a folder (or a new one); {existing} is "
                                 "a file")
        if self.mlflow_writer not in MLFLOW_WRITERS:
            raise ValueError(f"mlflow_writer must be one of {', '.join(MLFLOW_WRITERS)}; "
                             f"got {self.mlflow_writer!r}")
        pue = self.pue
        if pue is not None and (isinstance(pue, bool) or not isinstance(pue, (int, float))
                                or not 1.0 <= pue <= 5.0):
            raise ValueError(f"pue must be a number from 1 to 5 (facility energy over IT "
                             f"energy; typical data centres 1.1-2); got {pue!r}")
        code = self.country_iso_code
        if code is not None and not (isinstance(code, str) and len(code) == 3 and code.isalpha()):
            raise ValueError("country_iso_code must be an ISO 3166 alpha-3 code such as 'FRA' "
                             f"or 'USA'; got {code!r}")
        self.parent = _checked_parent(self.parent)
        self.spool_dir = Path(self.spool_dir) if self.spool_dir is not None else None


def _checked_parent(parent: Any) -> Any:
    """A parent that names a file must be one now (not at the first step); MLflow sources
    (``runs:/``, ``models:/``, ``m-``) are resolved, and every parent's digests checked,
    when the fit starts."""
    if parent is None or isinstance(parent, Mapping):
        return parent
    if not isinstance(parent, (str, Path)):
        raise TypeError("parent must be a checkpoint path, an MLflow source (runs:/..., "
                        f"models:/..., m-...) or a record; got {type(parent).__name__}")
    text = str(parent)
    if text.startswith(("runs:/", "models:/", "m-")):
        return parent
    path = Path(text).expanduser()
    if path.is_dir():
        raise ValueError(f"parent must be a checkpoint file; {text} is a directory")
    if not path.is_file():
        raise ValueError(f"parent must be an existing checkpoint file or an MLflow source "
                         f"(runs:/..., models:/..., m-...); {text} does not exist")
    return parent
