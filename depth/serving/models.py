"""A trained model ready to evaluate, from any source `depth.tracking.sources` resolves
(a checkpoint file, or an MLflow source whose LoggedModel holds the checkpoint file)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class LoadedModel:
    """A model ready to evaluate.

    Attributes:
        module: The model (``forward(idx, past) -> (logits, cache)``).
        record: Its depth record.
        vocab_size: Its vocabulary.
        flops_per_token: Inference FLOPs per token (2N + attention), if the model says.
        model_id: Its MLflow LoggedModel, when one is known.
        tracking_uri: The store of that LoggedModel.
        recipe: The recipe it was trained with (a dict), if the checkpoint has it.
    """

    module: Any
    record: dict[str, Any]
    vocab_size: int
    flops_per_token: float | None
    model_id: str | None
    tracking_uri: str | None
    recipe: dict[str, Any] | None = None


def _gpt_from_checkpoint(checkpoint: dict[str, Any]) -> Any:
    from depth.gpt.module import GPTModule

    hparams = checkpoint.get("hyper_parameters") or {}
    if "model" not in hparams or "optim" not in hparams:
        raise ValueError("the checkpoint is not of a depth GPT recipe (no model and optim "
                         "hyperparameters); evaluate other models from Python with "
                         "depth.serving.inference.measure")
    module = GPTModule(hparams["model"], hparams["optim"])
    module.load_state_dict(checkpoint["state_dict"])
    return module


def load_model(source: str, tracking_uri: str | None = None, trust: bool = False,
               find_in_mlflow: bool = True) -> LoadedModel:
    """Loads the model at `source` (a checkpoint path, ``runs:/``, ``models:/``, ``m-``).

    Raises:
        ValueError: One line: no such model, no checkpoint file behind an MLflow source, or
            a checkpoint that is not of a GPT recipe.
    """
    from depth.serving.hf import is_hf_source

    if is_hf_source(source):
        return load_hf_model(source, tracking_uri, trust, find_in_mlflow)
    from depth.tracking.sources import checkpoint_of

    found = checkpoint_of(source, tracking_uri, trust=trust, find_in_mlflow=find_in_mlflow)
    module = _gpt_from_checkpoint(found.checkpoint)
    return LoadedModel(module=module, record=found.record, vocab_size=module.config.vocab_size,
                       flops_per_token=module.flops_per_token(training=False),
                       model_id=found.model_id, tracking_uri=found.tracking_uri,
                       recipe=(found.checkpoint.get("hyper_parameters") or {}).get("recipe"))


def load_hf_model(source: str, tracking_uri: str | None = None, trust: bool = False,
                  find_in_mlflow: bool = True) -> LoadedModel:
    """A Hugging Face model (a directory with ``config.json``, or ``hf:NAME``); its record
    is the ``depth.json`` that `depth export` wrote beside it (none: ``{}``), and its
    LoggedModel the one that record was published as."""
    from depth.serving.hf import hf_record, load_hf
    from depth.tracking.sources import find_logged_model

    record = hf_record(source) or {}  # a damaged record is refused before the weights load
    module = load_hf(source, trust=trust)
    model_id = uri = None
    if find_in_mlflow and record.get("record_sha256"):
        from depth.tracking.store import default_tracking_uri, unreachable

        uri = tracking_uri or default_tracking_uri()
        model_id = find_logged_model(uri, record["record_sha256"]) if unreachable(uri) is None \
            else None
    return LoadedModel(module=module, record=record, vocab_size=module.config.vocab_size,
                       flops_per_token=module.flops_per_token(), model_id=model_id,
                       tracking_uri=uri if model_id else None)
