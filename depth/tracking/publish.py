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
NOTE = "mlflow.note.content"  # what MLflow shows as a description
MODEL_ARTIFACT = "depth_provenance.json"
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
TAG_FIELDS = ("train_joules", "train_kwh", "optimizer_steps", "train_tokens", "method",
              "measured", "weights_sha256", "wasted_joules", "record_sha256")
UNMEASURED = "unmeasured"  # a record's method when no device gave a valid reading


def depth_tags(record: Mapping[str, Any]) -> dict[str, str]:
    """``depth.<field>`` tags (strings, as MLflow stores them) for a record; an unmeasured
    record's energy tags say ``unmeasured``, not 0."""
    tags = {}
    unmeasured = record.get("method") == UNMEASURED
    for field in TAG_FIELDS:
        value = record.get(field)
        if unmeasured and field in ("train_joules", "train_kwh"):
            tags[f"depth.{field}"] = UNMEASURED
            continue
        if isinstance(value, bool):
            tags[f"depth.{field}"] = str(value).lower()
            continue
        if field == "train_kwh" and value is None and "train_joules" in record:
            value = record["train_joules"] / 3.6e6
        # floats in full (repr round-trips): search attribution adds these tags back up
        tags[f"depth.{field}"] = "unknown" if value is None else (
            repr(float(value)) if isinstance(value, float) else str(value))
    return tags


def publish_checkpoint(client: Any, run_id: str, record: Mapping[str, Any], step: int,
                       name: str | None = None) -> str:
    """Writes a checkpoint's record to its run and as a new LoggedModel; returns its id.

    The run gets the ``depth.*`` tags (the latest checkpoint's) and ``depth/provenance.json``;
    the LoggedModel (source run, ``depth.step``, a run output at `step`) gets the same tags,
    ``depth.*`` parameters (`depth.record.summary.model_params`), the record as an
    artifact, ``depth.train_joules``/``depth.train_kwh`` as model metrics at `step`, and a
    markdown summary as its description (and its run's, `depth.tracking.pages`). An
    experiment of no kind yet is marked as model training, so that the MLflow 3 UI shows
    its models view rather than the GenAI one.
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
    from depth.record.summary import model_params
    from depth.tracking.pages import describe_model

    existing = find_model(client, [run.info.experiment_id], record.get("record_sha256"))
    if existing is not None:  # published before (a retry or a replay): never twice
        describe_model(client, existing, record)  # the retry may follow a failed write
        return existing
    model = client.create_logged_model(
        run.info.experiment_id, name=name or f"{run.info.run_name or 'model'}-step-{step}",
        source_run_id=run_id, tags={**tags, "depth.step": str(step)},
        params=model_params(record))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / MODEL_ARTIFACT).write_text(text)
        client.log_model_artifacts(model.model_id, tmp)
    now_ms = int(time.time() * 1000)
    if record.get("method") != UNMEASURED:  # no energy figure: no 0 J metric
        client.log_batch(run_id, metrics=[
            Metric("depth.train_joules", float(record["train_joules"]), now_ms, step,
                   model_id=model.model_id),
            Metric("depth.train_kwh", float(record["train_joules"]) / 3.6e6, now_ms, step,
                   model_id=model.model_id)])
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step)])
    describe_model(client, model.model_id, record)
    client.finalize_logged_model(model.model_id, "READY")
    return model.model_id


def find_model(client: Any, experiment_ids: list[str] | None, digest: str | None
               ) -> str | None:
    """The LoggedModel already published for a record (by its ``depth.record_sha256``), in
    `experiment_ids` (``None``: in every experiment of the store)."""
    if experiment_ids is None:
        experiment_ids = [e.experiment_id for e in client.search_experiments()]
    if not digest or not experiment_ids:
        return None
    found = client.search_logged_models(
        experiment_ids, filter_string=f"tags.`depth.record_sha256` = '{digest}'",
        max_results=1)
    return found[0].model_id if found else None


def checkpoint_file_problem(path: str | Path, digest: str) -> str | None:
    """Why the file at `path` is not the checkpoint of record `digest` (one line), or
    ``None`` when it is: its embedded record is `digest`, unedited, and its weights are the
    ones that record names. Loaded without running code from the file."""
    from depth.record.checkpoint_io import load_checkpoint
    from depth.record.digest import CHECKPOINT_KEY, record_sha256, weights_sha256

    try:
        checkpoint = load_checkpoint(Path(path))
    except (OSError, ValueError) as err:
        return str(err)
    record = checkpoint.get(CHECKPOINT_KEY)
    if not isinstance(record, dict) or record.get("record_sha256") != digest:
        return f"{path} does not carry the record {digest[:12]}... it was queued for"
    state_dict = checkpoint.get("state_dict")
    if record_sha256(record) != digest or not isinstance(state_dict, dict) \
            or weights_sha256(state_dict) != record.get("weights_sha256"):
        return f"{path} no longer matches its record {digest[:12]}... (edited since)"
    return None


def publish_checkpoint_file(client: Any, run_id: str, path: str, digest: str,
                            verify: bool = False) -> str | None:
    """Uploads a checkpoint file to the LoggedModel of its record (under ``checkpoint/``);
    returns a one-line reason when it cannot (the model or the file is gone) or, with
    `verify`, must not (the file is not the checkpoint of that record)."""
    run = client.get_run(run_id)
    model_id = find_model(client, [run.info.experiment_id], digest)
    if model_id is None:
        return f"no LoggedModel with depth.record_sha256={digest} for {path}"
    if verify and Path(path).exists() and (problem := checkpoint_file_problem(path, digest)):
        return f"not uploaded: {problem}"
    try:  # ModelCheckpoint(save_top_k=...) may remove it at any moment, even mid-upload
        client.log_model_artifact(model_id, str(path), artifact_path="checkpoint")
    except FileNotFoundError:
        client.set_logged_model_tags(model_id, {"depth.checkpoint_file": "missing at upload"})
        return f"checkpoint file {path} was gone before it could be uploaded"
    client.set_logged_model_tags(model_id, {"depth.checkpoint_file": Path(path).name})
    return None


def publish_event(client: Any, run_id: str, event: Mapping[str, Any],
                  verify_files: bool = False) -> tuple[str | None, str | None]:
    """Publishes one queued checkpoint event: ``{"record", "step"}`` or ``{"file",
    "record_sha256", "step"}``. Returns (the LoggedModel id of a record, a one-line reason a
    file was not uploaded). `verify_files`: upload a file only if it is the checkpoint of
    the record it names (for events read from a spool file, which anyone may have
    written)."""
    if "file" in event:
        return None, publish_checkpoint_file(client, run_id, event["file"],
                                             event["record_sha256"], verify=verify_files)
    return publish_checkpoint(client, run_id, event["record"], int(event["step"])), None


def register_model(model: str, name: str, client: Any = None) -> Any:
    """Registers a LoggedModel (``m-<id>`` or ``models:/m-<id>``) under `name`, with its
    ``depth.*`` tags copied onto the new version, linked both ways as
    ``mlflow.register_model`` links them: the version's source is ``models:/<id>`` (and its
    ``depth.model_id`` tag the id), and the LoggedModel's ``mlflow.modelVersions`` tag lists
    the version. The version's description is the LoggedModel's (depth's summary, which
    `depth.tracking.pages` keeps current). Returns the ``ModelVersion``.

    MLflow's local registry resolves a ``models:/`` source through the *global* tracking
    URI, not the client's; it is pointed at the client's store for the call. (Its SQL
    registry does not keep ``ModelVersion.model_id``, as of MLflow 3.17: that field reads
    ``None`` even after ``mlflow.register_model``, hence the tag and the source.)
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    client = client or MlflowClient()
    model_id = model.removeprefix("models:/")
    logged = client.get_logged_model(model_id)
    tags = {k: v for k, v in logged.tags.items() if k.startswith("depth.")}
    tags["depth.model_id"] = model_id
    try:
        client.create_registered_model(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    with _use_tracking_uri(client.tracking_uri):
        version = client.create_model_version(name, source=f"models:/{model_id}",
                                              run_id=logged.source_run_id, tags=tags,
                                              model_id=model_id,
                                              description=logged.tags.get(NOTE))
    link_version(client, model_id, version.name, version.version)
    return version


def link_version(client: Any, model_id: str, name: str, version: Any) -> None:
    """Adds ``{name, version}`` to the LoggedModel's ``mlflow.modelVersions`` tag, as
    ``mlflow.register_model`` (and an ``mlflow server``) does; never twice."""
    key = "mlflow.modelVersions"
    listed = json.loads(client.get_logged_model(model_id).tags.get(key) or "[]")
    if any(v.get("name") == name and str(v.get("version")) == str(version) for v in listed):
        return
    client.set_logged_model_tags(model_id, {key: json.dumps(
        [*listed, {"name": name, "version": version}])})
