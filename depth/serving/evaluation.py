"""`depth eval` and `depth amortize`: a model's inference tokens/Wh set against physics and
its training energy, written where the model is (next to the checkpoint, and on its MLflow
LoggedModel)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from depth.serving import physics
from depth.serving.amortize import amortize, duration_text
from depth.serving.inference import EvalConfig, measure

EVAL_SUFFIX = ".depth-eval.json"


def held_out_loss(module: Any, recipe: Mapping[str, Any] | None, batches: int) -> float | None:
    """Mean cross-entropy (nats/token) of `module` on up to `batches` validation batches of
    the corpus its recipe trained on, or ``None`` without a recipe or with 0 batches."""
    if not recipe or batches < 1:
        return None
    from depth.gpt.data import DataConfig, GPTDataModule

    data = GPTDataModule(DataConfig(**recipe["data"]), recipe["model"]["block_size"],
                         recipe["train"]["batch_size"])
    data.setup("validate")
    losses = []
    module.eval()
    with torch.inference_mode():
        for i, batch in enumerate(data.val_dataloader()):
            if i >= batches:
                break
            _, loss, _ = module.gpt(batch["input_ids"], batch["labels"])
            losses.append(float(loss))
    return sum(losses) / len(losses) if losses else None


def _eval_meter(device: torch.device, meter: Any) -> Any:
    from depth.meters import auto_meter, make_meter

    if not isinstance(meter, str) or meter != "auto":
        return make_meter(meter)
    if device.type == "cuda":
        return auto_meter([device.index or 0], cpu="off")
    return auto_meter(gpu="off")


def physics_of(result: Mapping[str, Any], vocab_size: int, loss_nats: float | None,
               flops_per_token: float | None, device: physics.Hardware | None,
               temperature_k: float = 300.0) -> dict[str, Any]:
    """Landauer's bound per token, the compute ceiling, and how far the measured figure is
    from each."""
    j_per_token = result["joules_per_token"]
    out: dict[str, Any] = {"temperature_k": temperature_k,
                           "landauer_j_per_bit": physics.landauer_j_per_bit(temperature_k)}
    if loss_nats is not None:
        bits = physics.bits_removed_per_token(vocab_size, loss_nats)
        bound = physics.landauer_j_per_token(vocab_size, loss_nats, temperature_k)
        out.update(held_out_loss_nats=loss_nats, bits_removed_per_token=bits,
                   landauer_j_per_token=bound,
                   landauer_ratio=j_per_token / bound if bound > 0 else None)
    if flops_per_token and device is not None:
        ceiling = physics.ceiling_tokens_per_wh(flops_per_token, device)
        out.update(hardware=device.name, hardware_source=device.source,
                   flops_per_token=flops_per_token, ceiling_tokens_per_wh=ceiling,
                   ceiling_fraction=result["tokens_per_wh"] / ceiling)
    out["wh_per_million_tokens"] = physics.wh_per_million_tokens(result["tokens_per_wh"])
    return out


def energy_basis(meter: Any) -> dict[str, Any] | None:
    """How an estimating meter (alone or inside a combined one) models its joules: e.g.
    that it bills this process's CPU time x TDP share, not the machine's load."""
    for m in getattr(meter, "meters", [meter]):
        if getattr(m, "basis", None):
            return dict(m.basis)
    return None


def evaluate(source: str, config: EvalConfig, device: str | None = None, meter: Any = "auto",
             hardware: str | None = None, temperature_k: float = 300.0, loss_batches: int = 8,
             tracking_uri: str | None = None, log: bool = True, trust: bool = False,
             progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measures the model at `source`; returns one JSON-ready object (see `depth eval`).

    `meter` is ``"auto"``, a meter name, or an `EnergyMeter` (closed when done)."""
    from depth.serving.models import load_model

    loaded = load_model(source, tracking_uri=tracking_uri, trust=trust, find_in_mlflow=log)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    loss = held_out_loss(loaded.module, loaded.recipe, loss_batches)
    energy = _eval_meter(dev, meter)
    try:
        result = measure(loaded.module, energy.read, config, loaded.vocab_size, dev,
                         method=energy.method, progress=progress).to_dict()
        result["energy_basis"] = energy_basis(energy)
    finally:
        energy.close()
    device_hw = None
    if hardware:
        device_hw = physics.hardware(hardware)
    elif dev.type == "cuda":
        try:
            device_hw = physics.hardware(torch.cuda.get_device_name(dev))
        except ValueError:
            device_hw = None
    from depth.record.uncertainty import is_measured, of_method

    result["measured"] = is_measured(result["method"])
    result["uncertainty"] = of_method(result["method"])
    result["physics"] = physics_of(result, loaded.vocab_size, loss, loaded.flops_per_token,
                                   device_hw, temperature_k)
    result["source"] = source
    result["record_sha256"] = loaded.record.get("record_sha256")
    # A model without a record (a Hugging Face model from elsewhere) has no training side.
    result["train_joules"] = loaded.record.get("train_joules")
    result["depth_joules"] = loaded.record.get("depth_joules", result["train_joules"])
    result["parameters"] = loaded.record.get("parameters")
    result["break_even_tokens"] = (None if result["depth_joules"] is None
                                   else result["depth_joules"] / result["joules_per_token"])
    result["logged_model"] = None
    if not source.startswith(("runs:/", "models:/", "m-", "hf:")):
        written = eval_file(source)
        written.write_text(json.dumps(result, indent=2))
        result["written"] = str(written)
    if log and loaded.model_id and loaded.tracking_uri:
        log_inference(loaded.tracking_uri, loaded.model_id, result)
        result["logged_model"] = loaded.model_id
    return result


def eval_file(source: str) -> Path:
    """Where `depth eval` keeps its result for a checkpoint file or a model directory:
    beside it, ``SOURCE.depth-eval.json``."""
    return Path(source.rstrip("/") + EVAL_SUFFIX)


def _log_model_metrics(tracking_uri: str, model_id: str, metrics: list[tuple[str, float, int]],
                       tags: Mapping[str, str] | None = None) -> None:
    import time

    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(tracking_uri)
    model = client.get_logged_model(model_id)
    now = int(time.time() * 1000)
    client.log_batch(model.source_run_id, metrics=[
        Metric(k, float(v), now, step, model_id=model_id) for k, v, step in metrics
        if v is not None and math.isfinite(v)])
    if tags:
        client.set_logged_model_tags(model_id, dict(tags))


def log_inference(tracking_uri: str, model_id: str, result: Mapping[str, Any]) -> None:
    """``inference/*`` metrics on the LoggedModel: the best batch's tokens/Wh and J/token,
    and per batch size (the metric's step is the batch size)."""
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
    if result["break_even_tokens"] is not None:
        metrics.append(("amortize/break_even_tokens", result["break_even_tokens"], 0))
    _log_model_metrics(tracking_uri, model_id, metrics, {
        "depth.inference_method": result["method"], "depth.inference_device": result["device"],
        "depth.inference_dtype": result["dtype"],
        "depth.inference_measured": str(result["measured"]).lower(),
        "depth.inference_unstable_batches": ",".join(map(str, result["unstable_batches"]))
        or "none"})


def inference_j_per_token(source: str, tracking_uri: str | None = None
                          ) -> tuple[float, str, bool]:
    """The latest inference J/token `depth eval` found for a model, where it was found (the
    eval file next to a checkpoint, or the newest ``inference/joules_per_token`` metric of
    its LoggedModel), and whether a sensor measured it (``False`` for an estimate)."""
    saved = eval_file(source)
    if saved.is_file():
        j_per_token, measured = _eval_file_j_per_token(saved, source)
        return j_per_token, str(saved), measured
    if source.startswith(("runs:/", "models:/", "m-")):
        from mlflow import MlflowClient

        from depth.tracking.sources import logged_model_id
        from depth.tracking.store import default_tracking_uri

        client = MlflowClient(tracking_uri or default_tracking_uri())
        model = client.get_logged_model(logged_model_id(client, source))
        evals = [m for m in model.metrics or [] if m.key == "inference/joules_per_token"]
        if evals:  # every eval appends one; the newest is current
            latest = max(evals, key=lambda m: (m.timestamp, m.step))
            return (float(latest.value), f"{model.model_id} inference/joules_per_token",
                    model.tags.get("depth.inference_measured") == "true")
    raise ValueError(f"no inference measurement for {source}: run `depth eval {source}` "
                     "first, or give --joules-per-token")


AMORTIZE_TAGS = ("served_tokens", "tokens_per_day", "days", "inference_j_per_token",
                 "inference_source", "amortized_j_per_token", "training_share",
                 "break_even_tokens", "break_even_days")


def amortize_tags(result: Mapping[str, Any]) -> dict[str, str]:
    """``depth.amortize.<field>`` tags of one `depth amortize` scenario: every field, so
    that each run replaces all of the previous one's (``none`` where it has no value)."""
    def text(value: Any) -> str:
        return "none" if value is None else (f"{value:.6g}" if isinstance(value, float)
                                             else str(value))

    return {f"depth.amortize.{k}": text(result.get(k)) for k in AMORTIZE_TAGS}


def _eval_file_j_per_token(path: Path, source: str) -> tuple[float, bool]:
    """(``joules_per_token``, ``measured``) of an eval file `depth eval` wrote, checked: the
    file may have been edited or cut short since."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        value, measured = saved.get("joules_per_token"), saved.get("measured") is True
    except (OSError, ValueError, AttributeError):  # unreadable, not JSON, not an object
        value, measured = None, False
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            0 < value < math.inf):
        raise ValueError(f"{path} has no positive joules_per_token (edited or damaged?): run "
                         f"`depth eval {source}` again, or give --joules-per-token")
    return float(value), measured


def amortize_source(source: str, served_tokens: float | None, tokens_per_day: float | None,
                    days: float | None, joules_per_token: float | None = None,
                    tracking_uri: str | None = None, log: bool = True) -> dict[str, Any]:
    """`depth amortize`: the model's depth over a serving horizon.

    A J/token given by the user is marked ``supplied``, never measured. On its LoggedModel
    the scenario is kept as ``depth.amortize.*`` tags, which a later run overwrites: one
    current value per field. (LoggedModel metrics cannot be replaced, only appended to,
    and a what-if horizon is not a measurement to keep a history of.)"""
    from depth.tracking.sources import find_logged_model
    from depth.tracking.sources import read_provenance

    record = read_provenance(source, tracking_uri=tracking_uri)
    if joules_per_token is None:
        joules_per_token, where, measured = inference_j_per_token(source, tracking_uri)
        origin = "measured" if measured else "estimated"
    else:
        where, measured, origin = "supplied with --joules-per-token", False, "supplied"
    result = amortize(record.depth_joules, joules_per_token, served_tokens, tokens_per_day,
                      days).to_dict()
    result.update(source=source, inference_from=where, inference_source=origin,
                  inference_measured=measured, days=days,
                  break_even_duration=(duration_text(result["break_even_days"])
                                       if result["break_even_days"] is not None else None),
                  method=record.method, train_joules=record.train_joules,
                  depth_joules=record.depth_joules)
    result["logged_model"] = None
    if log:
        from depth.tracking.store import default_tracking_uri, unreachable

        uri = tracking_uri or default_tracking_uri()
        model_id = None
        if source.startswith(("runs:/", "models:/", "m-")):
            from mlflow import MlflowClient

            from depth.tracking.sources import logged_model_id

            model_id = logged_model_id(MlflowClient(uri), source)
        elif record.record_sha256 and unreachable(uri) is None:
            model_id = find_logged_model(uri, record.record_sha256)
        if model_id:
            from mlflow import MlflowClient

            MlflowClient(uri).set_logged_model_tags(model_id, amortize_tags(result))
            result["logged_model"] = model_id
    return result
