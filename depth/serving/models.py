"""A trained model from wherever it is: a checkpoint file, or an MLflow source whose
LoggedModel holds the checkpoint file (``DepthCallback(log_checkpoints=True)``), and the
LoggedModel its results belong to."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from depth.record.provenance import CHECKPOINT_KEY

MLFLOW_PREFIXES = ("runs:/", "models:/", "m-")


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


def find_logged_model(tracking_uri: str, digest: str) -> str | None:
    """The LoggedModel of a record (by ``depth.record_sha256``) in any experiment."""
    from mlflow import MlflowClient

    from depth.tracking.publish import find_model

    return find_model(MlflowClient(tracking_uri), None, digest)


def load_model(source: str, tracking_uri: str | None = None, trust: bool = False,
               find_in_mlflow: bool = True) -> LoadedModel:
    """Loads the model at `source` (a checkpoint path, ``runs:/``, ``models:/``, ``m-``).

    Raises:
        ValueError: One line: no such model, no checkpoint file behind an MLflow source, or
            a checkpoint that is not of a GPT recipe.
    """
    from depth.record.checkpoint_io import load_checkpoint

    model_id = None
    uri = None
    if source.startswith(MLFLOW_PREFIXES):
        from mlflow import MlflowClient
        from mlflow.artifacts import download_artifacts
        from mlflow.exceptions import MlflowException

        from depth.record.provenance import logged_model_id
        from depth.tracking.store import default_tracking_uri

        uri = tracking_uri or default_tracking_uri()
        client = MlflowClient(uri)
        try:
            model_id = logged_model_id(client, source)
            model = client.get_logged_model(model_id)
            files = [a.path for a in client.list_logged_model_artifacts(model_id, "checkpoint")]
        except MlflowException as err:
            raise ValueError(f"{source}: {' '.join(str(err).split())[:200]}") from None
        if not files:
            raise ValueError(f"{source} ({model_id}) has no checkpoint file: train with "
                             "DepthCallback(log_checkpoints=True), or pass the checkpoint path")
        with tempfile.TemporaryDirectory(prefix="depth-eval-") as tmp:  # loaded, then gone
            path = Path(download_artifacts(
                artifact_uri=f"{model.artifact_location}/{files[0]}", dst_path=tmp,
                tracking_uri=uri))
            checkpoint = load_checkpoint(path, trust=trust)
    else:
        checkpoint = load_checkpoint(Path(source), trust=trust)
    record = checkpoint.get(CHECKPOINT_KEY)
    if not isinstance(record, dict):
        raise ValueError(f"{source} carries no depth record")
    module = _gpt_from_checkpoint(checkpoint)
    if model_id is None and find_in_mlflow and record.get("record_sha256"):
        from depth.tracking.store import default_tracking_uri, unreachable

        uri = tracking_uri or default_tracking_uri()
        model_id = find_logged_model(uri, record["record_sha256"]) if not unreachable(uri) \
            else None
    return LoadedModel(module=module, record=record, vocab_size=module.config.vocab_size,
                       flops_per_token=module.flops_per_token(training=False),
                       model_id=model_id, tracking_uri=uri if model_id else None,
                       recipe=(checkpoint.get("hyper_parameters") or {}).get("recipe"))
