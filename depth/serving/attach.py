"""Inference figures attached to the trained model they belong to.

A *source* names that model: a checkpoint file, ``runs:/``, ``models:/`` or ``m-``. Its
depth record gives the training energy the figures are set against (break-even), and the
result is kept where `depth amortize` and `depth report` look: ``<checkpoint>.depth-eval.json``
beside a checkpoint file, and ``inference/*`` metrics on the source's MLflow LoggedModel
(for a checkpoint, the LoggedModel its record was published as, when the store has it).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EVAL_SUFFIX = ".depth-eval.json"

Warn = Callable[[str], None]  # takes one line: the CLI prints it, the API warns with it


def python_warning(line: str) -> None:
    """The default `Warn` of the Python API: a ``UserWarning`` saying ``depth: LINE``,
    pointing at the caller's line (the first frame outside the ``depth`` package), however
    deep inside depth it was raised."""
    import sys

    level, frame = 2, sys._getframe(1)
    while frame.f_back is not None and (
            frame.f_globals.get("__name__", "").partition(".")[0] == "depth"):
        frame, level = frame.f_back, level + 1
    warnings.warn(f"depth: {line}", stacklevel=level)


@dataclass
class Target:
    """The trained model a result attaches to.

    Attributes:
        source: As the user named it.
        record: Its depth record (a dict).
        model_id: Its MLflow LoggedModel, when one is known.
        tracking_uri: The store of that LoggedModel.
    """

    source: str
    record: dict[str, Any]
    model_id: str | None
    tracking_uri: str | None


def eval_file(source: str) -> Path:
    """Where `depth eval` keeps its result for a checkpoint file or a model folder: beside
    it, ``SOURCE.depth-eval.json``."""
    return Path(source.rstrip("/") + EVAL_SUFFIX)


def resolve_target(source: str, tracking_uri: str | None = None, log: bool = True,
                   trust: bool = False) -> Target:
    """Reads the record of `source` and finds its LoggedModel (when `log`).

    Raises:
        OSError: A missing or unreadable checkpoint file.
        ValueError: No record there, or an unreachable store for an MLflow source (one line).
    """
    from depth.tracking.sources import read_provenance

    record = read_provenance(source, tracking_uri=tracking_uri, trust=trust).to_dict()
    return target_for(source, record, tracking_uri, log)


def target_for(source: str, record: dict[str, Any], tracking_uri: str | None = None,
               log: bool = True, model_id: str | None = None) -> Target:
    """The target of a source whose record is already read: its LoggedModel is `model_id`,
    the one an MLflow source names, or (when `log` and the store answers) the one its
    record was published as."""
    from depth.tracking.sources import find_logged_model, is_mlflow_source
    from depth.tracking.store import default_tracking_uri

    uri = tracking_uri or default_tracking_uri()
    if log:
        check_reachable(uri)
    if model_id is None and is_mlflow_source(source):
        from depth.tracking.sources import logged_model_id, reader_client, reading

        client, uri = reader_client(tracking_uri)
        with reading(source):
            model_id = logged_model_id(client, source)
    elif model_id is None and log and record.get("record_sha256"):
        model_id = find_logged_model(uri, record["record_sha256"])
    return Target(source, record, model_id, uri if model_id else None)


def check_reachable(uri: str) -> None:
    """Refuses a tracking server that does not answer, before anything is measured: the
    result could not be logged, and MLflow's client would retry it for minutes.

    Raises:
        ValueError: One line naming the server (credentials redacted) and the way out.
    """
    from depth.tracking.store import redact, unreachable

    if (why := unreachable(uri)) is not None:
        raise ValueError(f"tracking server {redact(uri)} is unreachable ({why}): start it, "
                         "or measure without MLflow (--no-log; log=False in Python)")


def count_parameters(model: Any) -> int | None:
    """Parameters of a torch module, as the callback counts them for the record (shared
    tensors once); ``None`` for anything else (a generate callable, a server)."""
    params = getattr(model, "parameters", None)
    if not callable(params):
        return None
    try:
        return sum(p.numel() for p in params())
    except (TypeError, AttributeError):
        return None


def tie_warning(target: Target, own_record: Mapping[str, Any] | None, parameters: int | None,
                what: str = "the evaluated model", force: bool = False) -> str | None:
    """One line when `what` cannot be tied to the trained model `target` names, else
    ``None``; a parameter count that differs from the record's is refused unless `force`.

    Tied means: it carries that very record (same ``record_sha256``), or, carrying none,
    it has the parameter count that record states (weights change legitimately between
    training and serving: export, dtype, a server's own format, so their digest cannot be
    compared; the architecture's size can). A model carrying *another* record is refused
    earlier, not warned about.

    Raises:
        ValueError: `what` has another parameter count than the record states, and not
            `force` (one line): it is most likely another model, and its figures would
            replace the source's eval.
    """
    record = target.record
    if own_record and own_record.get("record_sha256") == record.get("record_sha256"):
        return None
    expected = record.get("parameters")
    if parameters is None:
        return (f"warning: {what} cannot be checked against {target.source}'s record (depth "
                "sees no weights): the figures are attached to it on your word")
    if expected is None:
        return (f"warning: {target.source}'s record states no parameter count, so {what} "
                f"({parameters:,} parameters) cannot be checked against it: the figures are "
                "attached to it on your word")
    if parameters != expected:
        said = (f"{what} has {parameters:,} parameters but {target.source}'s record states "
                f"{expected:,}: it is probably not the model trained there")
        if not force:
            raise ValueError(f"{said}; check --source, or give --force (force=True in "
                             "Python) to attach the figures to it anyway")
        return f"warning: {said} (attached anyway: forced)"
    return None


def _when(value: Any, fallback_s: float | None) -> str:
    if isinstance(value, str) and value:
        return value
    if fallback_s is None:
        return "an unknown date"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(fallback_s))


def previous_eval(source: str, model_id: str | None, tracking_uri: str | None
                  ) -> str | None:
    """What an eval attached to `source` now would replace, in words (its date, tokens/Wh
    and the model measured), or ``None`` when there is none."""
    path = eval_file(source)
    if path.is_file() and not source.startswith(("runs:/", "models:/", "m-", "hf:")):
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            tokens_per_wh = f"{float(saved['tokens_per_wh']):,.0f} tokens/Wh"
            model = saved.get("model_name") or saved.get("model") or "a model"
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return f"replaced {path} (unreadable: edited or damaged)"
        return (f"replaced the previous eval attached to {source}: {model} measured on "
                f"{_when(saved.get('measured_at'), path.stat().st_mtime)}, {tokens_per_wh}")
    if model_id and tracking_uri:
        from depth.tracking.store import store_client

        model = store_client(tracking_uri).get_logged_model(model_id)
        evals = [m for m in model.metrics or [] if m.key == "inference/tokens_per_wh"]
        if evals:
            latest = max(evals, key=lambda m: m.timestamp)
            return (f"superseded the previous eval on LoggedModel {model_id}: "
                    f"{model.tags.get('depth.inference_model', 'a model')} measured on "
                    f"{_when(None, latest.timestamp / 1000)}, {latest.value:,.0f} tokens/Wh "
                    "(its metrics stay in the LoggedModel's history)")
    return None


def write_eval(result: dict[str, Any], source: str, warn: Warn) -> None:
    """Writes `result` beside a checkpoint or model folder `source` (where `depth amortize`
    looks), saying what it replaces; sets ``written``."""
    written = eval_file(source)
    replaced = previous_eval(source, None, None)
    written.write_text(json.dumps(result, indent=2))
    result["written"] = str(written)
    if replaced:
        result.setdefault("warnings", []).append(replaced)
        warn(replaced)


def attach(result: dict[str, Any], target: Target, log: bool = True,
           warn: Warn = python_warning) -> dict[str, Any]:
    """Sets the source's training figures on `result` (``source``, ``record_sha256``,
    ``train_joules``, ``depth_joules``, ``parameters``, ``break_even_tokens``,
    ``measured_at``), writes it beside a checkpoint source, and logs it on the source's
    LoggedModel (when `log`); a previous eval it replaces is named through `warn`.
    Returns `result`, with ``written`` and ``logged_model`` set."""
    from depth.tracking.sources import is_mlflow_source

    record = target.record
    result.setdefault("measured_at", time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))
    result["source"] = target.source
    result["record_sha256"] = record.get("record_sha256")
    result["train_joules"] = record.get("train_joules")  # None: a model trained elsewhere
    result["depth_joules"] = record.get("depth_joules", result["train_joules"])
    if result.get("parameters") is None:
        result["parameters"] = record.get("parameters")
    result["break_even_tokens"] = (None if result["depth_joules"] is None
                                   else result["depth_joules"] / result["joules_per_token"])
    result["logged_model"], result["written"] = None, None
    result["not_logged"] = (None if log and target.model_id and target.tracking_uri else
                            not_logged_reason(target, log))
    beside = (bool(record) and not is_mlflow_source(target.source)
              and not target.source.startswith("hf:"))  # no record: nothing to attach to
    if beside:
        write_eval(result, target.source, warn)  # beside a file or a model folder
    elif log and target.model_id and target.tracking_uri:
        if replaced := previous_eval(target.source, target.model_id, target.tracking_uri):
            result.setdefault("warnings", []).append(replaced)
            warn(replaced)
    if log and target.model_id and target.tracking_uri:
        log_inference_metrics(target.tracking_uri, target.model_id, result, record)
        result["logged_model"] = target.model_id
        if beside:  # the file names the LoggedModel too, once it holds the figures
            Path(result["written"]).write_text(json.dumps(result, indent=2))
    return result


def not_logged_reason(target: Target, log: bool) -> str:
    """Why a result attached to `target` goes to no LoggedModel, in words."""
    if not target.record:
        return "no training record: give --source, or source= in Python"
    if not log:
        return "--no-log"
    return "no LoggedModel found for this model in the tracking store"


def log_inference(result: Mapping[str, Any], source: str, tracking_uri: str | None = None,
                  log: bool = True, trust: bool = False, force: bool = False
                  ) -> dict[str, Any]:
    """Attaches a measured result (from `depth.measure_inference`, or `depth eval --json`)
    to the trained model at `source`, as `depth eval --source` does; `depth amortize` and
    `depth report` then use it. Returns the result with the source's figures added.

    The measured model's parameter count (``model_parameters``) is checked against the
    source's record: when they differ it is refused unless `force` (then a warning); a
    warning says when there is none (a generate callable) to check.

    Raises:
        OSError: A missing or unreadable checkpoint file.
        ValueError: No record at `source`, a result without ``joules_per_token``, another
            parameter count than the record's (without `force`), or an unreachable
            tracking server (with `log`) (one line).
    """
    value = result.get("joules_per_token")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError("the result has no positive joules_per_token: pass what "
                         "depth.measure_inference returned")
    target = resolve_target(source, tracking_uri, log, trust)
    out = dict(result)
    if tie := tie_warning(target, None, out.get("model_parameters"), "the measured model",
                          force):
        out["warnings"] = [*out.get("warnings", []), tie]
        python_warning(tie)
    return attach(out, target, log)


def _log_model_metrics(tracking_uri: str, model_id: str, metrics: list[tuple[str, float, int]],
                       tags: Mapping[str, str] | None = None) -> None:
    from mlflow.entities import Metric

    from depth.tracking.store import store_client

    client = store_client(tracking_uri)
    model = client.get_logged_model(model_id)
    now = int(time.time() * 1000)
    client.log_batch(model.source_run_id, metrics=[
        Metric(k, float(v), now, step, model_id=model_id) for k, v, step in metrics
        if v is not None and math.isfinite(v)])
    if tags:
        client.set_logged_model_tags(model_id, dict(tags))


def _text(value: Any) -> str:
    return "unknown" if value is None else str(value).lower()


def log_inference_metrics(tracking_uri: str, model_id: str, result: Mapping[str, Any],
                          record: Mapping[str, Any] | None = None) -> None:
    """``inference/*`` metrics on the LoggedModel: the best batch's tokens/Wh and J/token,
    and per batch size (the metric's step is the batch size). With the model's `record`,
    its page's summary is written again with the new figures (tokens/Wh, break-even)."""
    metrics = [("inference/tokens_per_wh", result["tokens_per_wh"], 0),
               ("inference/joules_per_token", result["joules_per_token"], 0),
               ("inference/best_batch_size", result["best_batch_size"], 0)]
    for b in result["batches"]:
        metrics += [("inference/tokens_per_wh_by_batch", b["tokens_per_wh"], b["batch_size"]),
                    ("inference/prefill_joules_by_batch", b["prefill_joules"], b["batch_size"]),
                    ("inference/decode_joules_by_batch", b["decode_joules"], b["batch_size"]),
                    ("inference/spread_ratio_by_batch", b["spread_ratio"], b["batch_size"]),
                    ("inference/attempts_by_batch", b["attempts"], b["batch_size"]),
                    ("inference/unstable_by_batch", float(b["unstable"]), b["batch_size"])]
        if b["net_tokens_per_wh"] is not None:
            metrics.append(("inference/net_tokens_per_wh_by_batch", b["net_tokens_per_wh"],
                            b["batch_size"]))
    phys = result.get("physics", {})
    for key in ("ceiling_fraction", "landauer_ratio"):
        if phys.get(key) is not None:
            metrics.append((f"inference/{key}", phys[key], 0))
    metrics.append(("amortize/break_even_tokens", result["break_even_tokens"], 0))
    _log_model_metrics(tracking_uri, model_id, metrics, {
        "depth.inference_method": result["method"], "depth.inference_device": result["device"],
        "depth.inference_dtype": result["dtype"],
        "depth.inference_measured": str(result["measured"]).lower(),
        "depth.inference_kv_cache": _text(result.get("kv_cache")),
        "depth.inference_model": str(result.get("model") or result["source"]),
        "depth.inference_unstable_batches": ",".join(map(str, result["unstable_batches"]))
        or "none"})
    if record is not None:
        from depth.tracking.pages import describe_model
        from depth.tracking.store import store_client

        describe_model(store_client(tracking_uri), model_id, record)
