"""A trained model ready to evaluate, from whatever `depth eval` was given.

`load_model` is the one dispatch point: it walks `LOADERS` in order and the first loader
whose ``accepts`` says yes loads the request. Each loader is a pair of functions of a
`ModelRequest`: ``accepts(request) -> bool`` and ``load(request) -> LoadedModel``. Today:

- ``model-class``: the user's LightningModule (``--model-class pkg.mod:Class``), rebuilt
  with ``Class.load_from_checkpoint`` from a checkpoint file or an MLflow source;
- ``hf``: a Hugging Face model (a directory with ``config.json``, or ``hf:NAME``);
- ``depth-recipe``: a checkpoint of depth's own GPT recipe (the default, last).

Other forms (a Hugging Face directory, ...) plug in by inserting a `Loader` before the
default one.
"""

from __future__ import annotations

import importlib
import io
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class LoadedModel:
    """A model ready to evaluate.

    Attributes:
        module: The model: ``forward(idx)`` returning logits, optionally taking ``past``
            (see `depth.serving.adapters`).
        record: The depth record the model carries (``None``: it carries none, and the
            result needs a ``--source``).
        vocab_size: Its vocabulary (``None``: read from the logits).
        flops_per_token: Inference FLOPs per token (2N + attention), if the model says.
        model_id: Its MLflow LoggedModel, when one is known.
        tracking_uri: The store of that LoggedModel.
        recipe: The recipe it was trained with (a dict), if the checkpoint has it.
        loader: The loader's name (``depth-recipe``, ``model-class``, ...).
        description: What was loaded, for the result (e.g. ``pkg.mod:Class``).
    """

    module: Any
    record: dict[str, Any] | None
    vocab_size: int | None
    flops_per_token: float | None
    model_id: str | None
    tracking_uri: str | None
    recipe: dict[str, Any] | None = None
    loader: str = "depth-recipe"
    description: str | None = None


@dataclass
class ModelRequest:
    """What to load.

    Attributes:
        source: The positional argument of `depth eval` (a checkpoint path, ``runs:/``,
            ``models:/``, ``m-``, or what another loader accepts).
        model_class: ``package.module:Class`` of the user's LightningModule, if given.
        tracking_uri: Where MLflow sources live.
        trust: Let a checkpoint file run the code it pickles.
        find_in_mlflow: Look up the LoggedModel of a checkpoint's record.
    """

    source: str
    model_class: str | None = None
    tracking_uri: str | None = None
    trust: bool = False
    find_in_mlflow: bool = True


@dataclass(frozen=True)
class Loader:
    """One way of loading a model: its name, whether it takes a request, and how."""

    name: str
    accepts: Callable[[ModelRequest], bool]
    load: Callable[[ModelRequest], LoadedModel]


def _gpt_from_checkpoint(checkpoint: dict[str, Any]) -> Any:
    from depth.gpt.module import GPTModule

    hparams = checkpoint.get("hyper_parameters") or {}
    if "model" not in hparams or "optim" not in hparams:
        raise ValueError("the checkpoint is not of a depth GPT recipe (no model and optim "
                         "hyperparameters); for your own LightningModule give --model-class "
                         "package.module:Class")
    module = GPTModule(hparams["model"], hparams["optim"])
    module.load_state_dict(checkpoint["state_dict"])
    return module


def _load_recipe(request: ModelRequest) -> LoadedModel:
    from depth.tracking.sources import checkpoint_of

    found = checkpoint_of(request.source, request.tracking_uri, trust=request.trust,
                          find_in_mlflow=request.find_in_mlflow)
    module = _gpt_from_checkpoint(found.checkpoint)
    return LoadedModel(module=module, record=found.record, vocab_size=module.config.vocab_size,
                       flops_per_token=module.flops_per_token(training=False),
                       model_id=found.model_id, tracking_uri=found.tracking_uri,
                       recipe=(found.checkpoint.get("hyper_parameters") or {}).get("recipe"),
                       loader="depth-recipe", description="depth GPT recipe")


def import_class(spec: str) -> Any:
    """The class ``package.module:Class`` names, imported as ``python -m`` would (the
    current directory first on the path, so a project's own package is found).

    Raises:
        ValueError: One line: the wrong form, a module that does not import, no such class,
            or no ``load_from_checkpoint`` on it.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--model-class takes package.module:Class (got {spec!r})")
    if module_name.endswith(".py") or "/" in module_name or "\\" in module_name:
        dotted = module_name.removesuffix(".py").replace("\\", "/").strip("./")
        dotted = ".".join(part for part in dotted.split("/") if part not in ("", "."))
        raise ValueError(f"--model-class {spec}: use module:Class ({dotted}:{attr}), not a "
                         "file path; run from the folder that holds the module")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as err:  # the user's module: ImportError, or anything it raises
        text = " ".join(str(err).split())[:200]
        raise ValueError(f"--model-class {spec}: cannot import {module_name} "
                         f"({type(err).__name__}: {text}); run from the folder that holds "
                         "the package, or install it") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"--model-class {spec}: {module_name} has no {attr}")
        obj = getattr(obj, part)
    if not callable(getattr(obj, "load_from_checkpoint", None)):
        raise ValueError(f"--model-class {spec}: not a LightningModule (it has no "
                         "load_from_checkpoint)")
    return obj


def _load_user_class(request: ModelRequest) -> LoadedModel:
    import torch

    from depth.record.checkpoint_io import load_checkpoint
    from depth.record.digest import CHECKPOINT_KEY
    from depth.tracking.sources import checkpoint_of, is_mlflow_source

    assert request.model_class is not None
    cls = import_class(request.model_class)  # before the checkpoint: a typo fails fast
    if is_mlflow_source(request.source):
        found = checkpoint_of(request.source, request.tracking_uri, trust=request.trust,
                              find_in_mlflow=request.find_in_mlflow)
        checkpoint, record = found.checkpoint, found.record
        model_id, tracking_uri = found.model_id, found.tracking_uri
    else:  # its own record, if any, is checked when the result is attached to a source
        from pathlib import Path

        checkpoint = load_checkpoint(Path(request.source), trust=request.trust)
        record, model_id, tracking_uri = checkpoint.get(CHECKPOINT_KEY), None, None
        if record is not None:
            from depth.record.schema import check_record

            try:  # before any measuring: a record of the wrong shape would fail only after
                check_record(record)
            except ValueError as err:
                raise ValueError(f"{request.source}: {err}") from None
    buffer = io.BytesIO()  # loaded safely above; Lightning rebuilds the module from it
    torch.save(checkpoint, buffer)
    buffer.seek(0)
    try:
        module = cls.load_from_checkpoint(buffer, map_location="cpu",
                                          weights_only=not request.trust)
    except Exception as err:  # the user's __init__ and state dict: anything can fail
        text = " ".join(str(err).split())[:200]
        raise ValueError(f"{request.model_class}.load_from_checkpoint({request.source}) "
                         f"failed ({type(err).__name__}: {text})") from None
    return LoadedModel(module=module, record=record if isinstance(record, dict) else None,
                       vocab_size=None, flops_per_token=_inference_flops(module),
                       model_id=model_id, tracking_uri=tracking_uri, loader="model-class",
                       description=request.model_class)


def _inference_flops(module: Any) -> float | None:
    """``module.flops_per_token(training=False)`` when the module has it, as depth's GPT
    does (for the compute ceiling); ``None`` when it has not, or it takes other arguments."""
    flops = getattr(module, "flops_per_token", None)
    try:
        return float(flops(training=False)) if callable(flops) else None
    except (TypeError, ValueError):
        return None


def _is_hf(request: ModelRequest) -> bool:
    from depth.serving.hf import is_hf_source

    return request.model_class is None and is_hf_source(request.source)


def _load_hf(request: ModelRequest) -> LoadedModel:
    """A Hugging Face model (a directory with ``config.json``, or ``hf:NAME``); its record
    is the ``depth.json`` that `depth export` wrote beside it (none: ``None``, and the
    result needs ``--source``), and its LoggedModel the one that record was published as."""
    from depth.serving.hf import hf_record, load_hf
    from depth.tracking.sources import find_logged_model

    record = hf_record(request.source)  # a damaged record is refused before the weights load
    module = load_hf(request.source, trust=request.trust)
    model_id = uri = None
    if request.find_in_mlflow and record and record.get("record_sha256"):
        from depth.tracking.store import default_tracking_uri, unreachable

        uri = request.tracking_uri or default_tracking_uri()
        model_id = (find_logged_model(uri, record["record_sha256"])
                    if unreachable(uri) is None else None)
    return LoadedModel(module=module, record=record, vocab_size=module.config.vocab_size,
                       flops_per_token=module.flops_per_token(), model_id=model_id,
                       tracking_uri=uri if model_id else None, loader="hf",
                       description=f"Hugging Face model {request.source}")


LOADERS: list[Loader] = [
    Loader("model-class", lambda r: r.model_class is not None, _load_user_class),
    Loader("hf", _is_hf, _load_hf),
    Loader("depth-recipe", lambda r: True, _load_recipe),
]


def load_model(source: str | ModelRequest, tracking_uri: str | None = None,
               trust: bool = False, find_in_mlflow: bool = True,
               model_class: str | None = None) -> LoadedModel:
    """Loads the model a request names, with the first of `LOADERS` that accepts it.

    Raises:
        OSError: A missing or unreadable file.
        ValueError: One line: no such model, no checkpoint file behind an MLflow source, a
            checkpoint that is not of a GPT recipe without `model_class`, or a user class
            that does not load.
    """
    request = source if isinstance(source, ModelRequest) else ModelRequest(
        source, model_class, tracking_uri, trust, find_in_mlflow)
    loader = next(loader for loader in LOADERS if loader.accepts(request))
    return loader.load(request)
