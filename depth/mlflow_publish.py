"""Publishing energy records to MLflow: run tags, the provenance artifact, LoggedModels.

Called by the metric writers (off the training thread, rank zero only) at every
checkpoint, and by users to register a checkpoint's LoggedModel with its tags (MLflow's
own ``register_model`` does not copy a LoggedModel's tags to the new version).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

RUN_ARTIFACT = "depth/provenance.json"
MODEL_ARTIFACT = "depth_provenance.json"
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
TAG_FIELDS = ("train_joules", "train_kwh", "optimizer_steps", "train_tokens", "method",
              "weights_sha256", "wasted_joules")


def depth_tags(record: Mapping[str, Any]) -> dict[str, str]:
    """``depth.<field>`` tags (strings, as MLflow stores them) for a record."""
    tags = {}
    for field in TAG_FIELDS:
        value = record.get(field)
        if field == "train_kwh" and value is None and "train_joules" in record:
            value = record["train_joules"] / 3.6e6
        tags[f"depth.{field}"] = "unknown" if value is None else (
            f"{value:.6g}" if isinstance(value, float) else str(value))
    return tags


def publish_checkpoint(client: Any, run_id: str, record: Mapping[str, Any], step: int,
                       name: str | None = None) -> str:
    """Writes a checkpoint's record to its run and as a new LoggedModel; returns its id.

    The run gets the ``depth.*`` tags (the latest checkpoint's) and ``depth/provenance.json``;
    the LoggedModel (source run, ``depth.step``, a run output at `step`) gets the same tags,
    the record as an artifact, and ``depth.train_joules``/``depth.train_kwh`` as model
    metrics at `step`. An experiment of no kind yet is marked as model training, so that
    the MLflow 3 UI shows its models view rather than the GenAI one.
    """
    from mlflow.entities import LoggedModelOutput, Metric, RunTag

    run = client.get_run(run_id)
    experiment = client.get_experiment(run.info.experiment_id)
    if EXPERIMENT_KIND not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)
    tags = depth_tags(record)
    text = json.dumps(record, indent=2, sort_keys=True)
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    client.log_text(run_id, text, RUN_ARTIFACT)
    model = client.create_logged_model(
        run.info.experiment_id, name=name or f"{run.info.run_name or 'model'}-step-{step}",
        source_run_id=run_id, tags={**tags, "depth.step": str(step)})
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / MODEL_ARTIFACT).write_text(text)
        client.log_model_artifacts(model.model_id, tmp)
    now_ms = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[
        Metric("depth.train_joules", float(record["train_joules"]), now_ms, step,
               model_id=model.model_id),
        Metric("depth.train_kwh", float(record["train_joules"]) / 3.6e6, now_ms, step,
               model_id=model.model_id)])
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step)])
    client.finalize_logged_model(model.model_id, "READY")
    return model.model_id


def register_model(model: str, name: str, client: Any = None) -> Any:
    """Registers a LoggedModel (``m-<id>`` or ``models:/m-<id>``) under `name`, with its
    ``depth.*`` tags copied onto the new version. Returns the ``ModelVersion``."""
    from mlflow import MlflowClient

    client = client or MlflowClient()
    model_id = model.removeprefix("models:/")
    logged = client.get_logged_model(model_id)
    tags = {k: v for k, v in logged.tags.items() if k.startswith("depth.")}
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    return client.create_model_version(name, source=f"models:/{model_id}",
                                       run_id=logged.source_run_id, tags=tags, model_id=model_id)
