"""`depth eval` and `depth amortize`: a model's inference tokens/Wh set against physics and
its training energy, written where the model is (next to the checkpoint, and on its MLflow
LoggedModel)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from depth.serving import physics
from depth.serving.amortize import amortize, duration_text
from depth.serving.attach import (  # noqa: F401  (EVAL_SUFFIX, metrics: names others use)
    EVAL_SUFFIX,
    Target,
    Warn,
    _log_model_metrics,
    attach,
    count_parameters,
    eval_file,
    log_inference_metrics,
    python_warning,
    resolve_target,
    target_for,
)
from depth.serving.inference import EvalConfig, measure

NOT_A_RECIPE = "not a depth recipe"  # why a model's held-out loss is not measured


HF_EXPORT = "Hugging Face folder: held-out loss needs the depth checkpoint"


def loss_note(loader: str, recipe: Mapping[str, Any] | None, batches: int,
              record: Mapping[str, Any] | None = None) -> str:
    """Why no held-out loss was measured: only a depth recipe's checkpoint names its
    held-out data (a folder `depth export` made carries the record, not the recipe)."""
    if loader == "hf" and record:
        return HF_EXPORT
    if loader != "depth-recipe":
        return NOT_A_RECIPE
    if not recipe:
        return "the checkpoint names no recipe, so no held-out data"
    return "--loss-batches 0" if batches < 1 else "no validation batches"


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
               temperature_k: float = 300.0, loss_note: str = NOT_A_RECIPE) -> dict[str, Any]:
    """Landauer's bound per token, the compute ceiling, and how far the measured figure is
    from each. ``loss`` says whether the held-out loss (which the bound needs) was measured,
    and if not why (`loss_note`): never a silent gap."""
    j_per_token = result["joules_per_token"]
    out: dict[str, Any] = {"temperature_k": temperature_k,
                           "landauer_j_per_bit": physics.landauer_j_per_bit(temperature_k),
                           "held_out_loss_nats": loss_nats,
                           "loss": ("measured on the recipe's validation split"
                                    if loss_nats is not None else f"not measured ({loss_note})")}
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


def measure_result(model: Any, config: EvalConfig, device: str | torch.device | None = None,
                   meter: Any = "auto", *, vocab_size: int | None = None,
                   hardware: str | None = None, temperature_k: float = 300.0,
                   loss_nats: float | None = None, flops_per_token: float | None = None,
                   context_tokens: int | None = None, kv_cache: bool | None = None,
                   progress: Callable[[str], None] | None = None,
                   on_start: Callable[[dict[str, Any]], None] | None = None,
                   loss_note: str = NOT_A_RECIPE) -> dict[str, Any]:
    """Measures `model` (a model or a runner of `depth.serving.adapters`) with a meter and
    sets it against physics: the JSON-ready result, before it is attached to a source.

    `meter` is ``"auto"``, a meter name, or an `EnergyMeter` (closed when done).
    `on_start` gets what the table's heading says (device, dtype, method, uncertainty) once
    the meter is open and before anything is measured, so that a heading precedes the
    `progress` lines."""
    from depth.record.uncertainty import is_measured, of_method

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    energy = _eval_meter(dev, meter)
    try:
        if on_start is not None:
            on_start({"device": str(dev), "dtype": config.dtype, "method": energy.method,
                      "measured": is_measured(energy.method),
                      "uncertainty": of_method(energy.method),
                      "energy_basis": energy_basis(energy)})
        result = measure(model, energy.read, config, vocab_size, dev, method=energy.method,
                         progress=progress, context_tokens=context_tokens,
                         kv_cache=kv_cache).to_dict()
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
    result["model_parameters"] = count_parameters(model)  # to tie it to a source's record
    result["measured"] = is_measured(result["method"])
    result["uncertainty"] = of_method(result["method"])
    result["physics"] = physics_of(result, result["vocab_size"], loss_nats, flops_per_token,
                                   device_hw, temperature_k, loss_note)
    return result


def _target_of(loaded: Any, model: str, source: str | None, tracking_uri: str | None,
               log: bool, trust: bool) -> Target:
    """Where the result goes: `source` (``--source``), else the model's own record.

    Raises:
        ValueError: The model carries no record and no `source` is given, or its record is
            another model's than `source`'s (one line).
    """
    if source is None:
        if loaded.record is None and loaded.loader == "hf":  # trained elsewhere: no depth
            return Target(model, {}, None, None)
        if loaded.record is None:
            raise ValueError(f"{model} carries no depth record: give --source naming the "
                             "trained model (a checkpoint, runs:/, models:/ or m-)")
        return target_for(model, loaded.record, tracking_uri if loaded.model_id is None
                          else loaded.tracking_uri, log, loaded.model_id)
    target = resolve_target(source, tracking_uri, log, trust)
    own, theirs = (loaded.record or {}).get("record_sha256"), target.record.get("record_sha256")
    if own and theirs and own != theirs:
        raise ValueError(f"{model} carries its own depth record (sha256 {own[:12]}), not "
                         f"{source}'s ({theirs[:12]}): leave out --source to attach the "
                         "result to the model's own record")
    return target


def evaluate(source: str, config: EvalConfig, device: str | None = None, meter: Any = "auto",
             hardware: str | None = None, temperature_k: float = 300.0, loss_batches: int = 8,
             tracking_uri: str | None = None, log: bool = True, trust: bool = False,
             progress: Callable[[str], None] | None = None, model_class: str | None = None,
             attach_to: str | None = None, context_tokens: int | None = None,
             kv_cache: bool | None = None, warn: Warn = python_warning,
             on_start: Callable[[dict[str, Any]], None] | None = None,
             force: bool = False) -> dict[str, Any]:
    """Measures the model at `source`; returns one JSON-ready object (see `depth eval`).

    Args:
        source: The model: a checkpoint file or an MLflow source with one.
        model_class: ``package.module:Class`` of the user's LightningModule (default: the
            checkpoint is of depth's GPT recipe).
        attach_to: The trained model the result belongs to (``--source``; default: the
            model's own record).
        context_tokens: The model's longest context (default: what the model says).
        kv_cache: ``False`` recomputes the context even for a model with a cache.
        meter: ``"auto"``, a meter name, or an `EnergyMeter` (closed when done).
        warn: Gets each warning line: a model that cannot be tied to `attach_to`'s record
            (said before measuring), a previous eval the result replaces.
        on_start: Gets the heading's facts before measuring (see `measure_result`).
        force: Attach to `attach_to` even a model whose parameter count differs from
            its record's (else refused before measuring).
    """
    from depth.serving.attach import tie_warning
    from depth.serving.models import ModelRequest, load_model

    loaded = load_model(ModelRequest(source, model_class, tracking_uri, trust,
                                     find_in_mlflow=log and attach_to is None))
    target = _target_of(loaded, source, attach_to, tracking_uri, log, trust)  # before measuring
    tie = attach_to and tie_warning(target, loaded.record, count_parameters(loaded.module),
                                    force=force)
    if tie:
        warn(tie)
    loss = held_out_loss(loaded.module, loaded.recipe, loss_batches)
    result = measure_result(loaded.module, config, device, meter, vocab_size=loaded.vocab_size,
                            hardware=hardware, temperature_k=temperature_k, loss_nats=loss,
                            flops_per_token=loaded.flops_per_token,
                            context_tokens=context_tokens, kv_cache=kv_cache,
                            progress=progress, on_start=on_start,
                            loss_note=loss_note(loaded.loader, loaded.recipe, loss_batches,
                                                loaded.record))
    result.update(model=source, model_class=model_class, loader=loaded.loader,
                  warnings=[tie] if tie else [])
    return attach(result, target, log, warn)


def _logged_model_of(source: str, tracking_uri: str | None, record_sha256: str | None
                     ) -> tuple[Any, str] | None:
    """(an ``MlflowClient``, the LoggedModel id) of `source`: the one an MLflow source names,
    or the one a checkpoint's record was published as (when a store is there to ask: the
    default store is not created for the question)."""
    from depth.tracking.sources import find_logged_model, is_mlflow_source, logged_model_id
    from depth.tracking.store import (
        DEFAULT_STORE_DIR,
        default_tracking_uri,
        store_client,
        unreachable,
    )

    if is_mlflow_source(source):
        client = store_client(tracking_uri or default_tracking_uri())
        return client, logged_model_id(client, source)
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri is None and (DEFAULT_STORE_DIR / "mlflow.db").is_file():
        uri = default_tracking_uri()
    if uri is not None and uri.startswith("sqlite:///") and not Path(
            uri[len("sqlite:///"):]).is_file():
        return None  # no store there yet: nothing to find, and none is made by asking
    if not record_sha256 or uri is None or unreachable(uri) is not None:
        return None
    model_id = find_logged_model(uri, record_sha256)
    return (store_client(uri), model_id) if model_id else None


def inference_j_per_token(source: str, tracking_uri: str | None = None,
                          record_sha256: str | None = None) -> tuple[float, str, bool]:
    """The latest inference J/token `depth eval` found for a model, where it was found (the
    eval file next to a checkpoint, else the newest ``inference/joules_per_token`` metric of
    its LoggedModel: the one an MLflow source names, or for a checkpoint the one its record,
    `record_sha256`, was published as), and whether a sensor measured it (``False`` for
    an estimate)."""
    saved = eval_file(source)
    if saved.is_file():
        j_per_token, measured = _eval_file_j_per_token(saved, source)
        return j_per_token, str(saved), measured
    if found := _logged_model_of(source, tracking_uri, record_sha256):
        client, model_id = found
        model = client.get_logged_model(model_id)
        evals = [m for m in model.metrics or [] if m.key == "inference/joules_per_token"]
        if evals:  # every eval appends one; the newest is current
            latest = max(evals, key=lambda m: (m.timestamp, m.step))
            return (float(latest.value), f"{model.model_id} inference/joules_per_token",
                    model.tags.get("depth.inference_measured") == "true")
    raise ValueError(f"no inference measurement for {source}: run `depth eval {source}` "
                     "first (with --model-class package.module:Class for your own "
                     f"LightningModule, or --source {source} for a model measured elsewhere), "
                     "or give --joules-per-token")


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
    from depth.tracking.sources import find_logged_model, read_provenance

    record = read_provenance(source, tracking_uri=tracking_uri)
    if joules_per_token is None:
        joules_per_token, where, measured = inference_j_per_token(source, tracking_uri,
                                                                  record.record_sha256)
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
            from depth.tracking.sources import logged_model_id
            from depth.tracking.store import store_client

            model_id = logged_model_id(store_client(uri), source)
        elif record.record_sha256 and unreachable(uri) is None:
            model_id = find_logged_model(uri, record.record_sha256)
        if model_id:
            from depth.tracking.pages import describe_model
            from depth.tracking.store import store_client

            client = store_client(uri)
            client.set_logged_model_tags(model_id, amortize_tags(result))
            describe_model(client, model_id, record.to_dict())  # the page shows the scenario
            result["logged_model"] = model_id
    return result
