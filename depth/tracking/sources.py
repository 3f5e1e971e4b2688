"""Sources: where a trained model and its record are, in MLflow or on disk.

A source is a checkpoint path, ``runs:/<run_id>`` (the run's latest checkpoint),
``models:/<name>/<version>`` or ``models:/<name>@<alias>`` (a registered version), or
``m-<id>``/``models:/m-<id>`` (a LoggedModel). This module resolves MLflow sources to
LoggedModels, records and checkpoint files; `read_provenance` is the public reader for
every form (files go to `depth.record.provenance`). Loading a model from a checkpoint is
the serving stage's job.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from depth.record.digest import CHECKPOINT_KEY
from depth.record.lineage import check_parent
from depth.record.provenance import Provenance, provenance_from_checkpoint

MLFLOW_PREFIXES = ("runs:/", "models:/", "m-")
EXPORTED_RECORD = "depth.json"  # a model directory's record (`depth export` writes it)


def is_mlflow_source(source: str | Path) -> bool:
    """True for ``runs:/``, ``models:/`` and ``m-`` sources (anything else is a path)."""
    return str(source).startswith(MLFLOW_PREFIXES)


def reader_client(tracking_uri: str | None = None) -> tuple[Any, str]:
    """(an ``MlflowClient``, its URI) for reading `tracking_uri` (default:
    ``MLFLOW_TRACKING_URI``, else the default store), once its server has answered.

    Raises:
        ValueError: One line, credentials redacted, within seconds when the server is down
            (MLflow's own client retries for minutes).
    """
    from depth.tracking.store import default_tracking_uri, redact, store_client, unreachable

    uri = tracking_uri or default_tracking_uri()
    if (missing := missing_sqlite_store(uri)) is not None:  # MLflow would create it, empty
        raise ValueError(f"no MLflow store at {missing} (the file does not exist): check "
                         "--tracking-uri or MLFLOW_TRACKING_URI")
    if (why := unreachable(uri)) is not None:
        raise ValueError(f"tracking server {redact(uri)} is unreachable ({why})")
    return store_client(uri), uri


def missing_sqlite_store(uri: str) -> str | None:
    """The path of a ``sqlite:///`` store whose file does not exist, else ``None``: a
    command that only reads must not leave a new empty database behind a typo."""
    from pathlib import Path

    if not uri.startswith("sqlite:///") or ":memory:" in uri:
        return None
    path = uri.removeprefix("sqlite:///").split("?")[0]
    return None if Path(path).exists() else path


PROGRESS_BAR_ENV = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


@contextmanager
def quiet_download() -> Iterator[None]:
    """MLflow's "Downloading artifacts" progress bar off while depth fetches a record or a
    checkpoint: a command's output is its own lines (MLflow reads the variable at each
    download; the caller's value is restored after)."""
    import os

    previous = os.environ.get(PROGRESS_BAR_ENV)
    os.environ[PROGRESS_BAR_ENV] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(PROGRESS_BAR_ENV, None)
        else:
            os.environ[PROGRESS_BAR_ENV] = previous


@contextmanager
def reading(source: str) -> Iterator[None]:
    """Turns what MLflow raises while reading `source` into one ``ValueError`` line naming
    it, with any ``user:password@`` in the message redacted (MLflow names the request URL)."""
    from mlflow.exceptions import MlflowException

    from depth.tracking.store import redact_text

    try:
        yield
    except MlflowException as err:
        message = redact_text(" ".join(str(getattr(err, "message", err)).split()))
        raise ValueError(f"{source}: {message[:200]}") from None
    except OSError as err:
        message = redact_text(" ".join(str(err.strerror or err).split()))
        raise ValueError(f"{source}: no depth record there ({message[:200]})") from None


def _logged_model_of(version: Any) -> str | None:
    """The LoggedModel behind a registered version (some stores leave ``model_id`` empty
    and keep it only in the version's ``source``, ``models:/m-<id>``)."""
    if getattr(version, "model_id", None):
        return version.model_id
    source = str(getattr(version, "source", "") or "")
    return source.removeprefix("models:/") if source.startswith("models:/m-") else None


def logged_model_id(client: Any, source: str) -> str:
    """The LoggedModel behind ``m-<id>``, ``models:/m-<id>``, ``models:/NAME/VERSION``,
    ``models:/NAME@ALIAS``, or ``runs:/<run_id>`` (the run's latest checkpoint's)."""
    if source.startswith("runs:/"):
        run_id = source.removeprefix("runs:/").split("/")[0]
        experiment = client.get_run(run_id).info.experiment_id
        models = [m for m in client.search_logged_models([experiment])
                  if m.source_run_id == run_id and "depth.step" in m.tags]
        if not models:
            raise ValueError(f"{source}: the run has no checkpoint LoggedModel")
        return max(models, key=lambda m: int(m.tags["depth.step"])).model_id
    name = source.removeprefix("models:/")
    if name.startswith("m-"):
        model_id = name.split("/")[0]
    elif "@" in name:
        registered, alias = name.split("@", 1)
        model_id = _logged_model_of(client.get_model_version_by_alias(registered, alias))
    elif "/" in name:
        registered, version = name.split("/", 1)
        model_id = _logged_model_of(client.get_model_version(registered, version))
    else:
        raise ValueError(f"{source}: give a version (models:/NAME/VERSION) or an alias "
                         "(models:/NAME@ALIAS)")
    if not model_id:
        raise ValueError(f"{source} is a model version without a LoggedModel behind it")
    return model_id


def read_provenance(source: str | Path, tracking_uri: str | None = None,
                    trust: bool = False) -> Provenance:
    """The depth record of a model, wherever it is.

    Args:
        source: A checkpoint file path, or a model directory with the ``depth.json``
            `depth export` wrote; ``runs:/<run_id>`` (the run's latest record);
            ``models:/<name>/<version>`` or ``models:/<name>@<alias>`` (a registered
            version); ``m-<model_id>`` or ``models:/m-<model_id>`` (a LoggedModel).
        tracking_uri: Where MLflow sources live (default: ``MLFLOW_TRACKING_URI`` or the
            default store).
        trust: Let a checkpoint file run the code it pickles (never for MLflow sources).

    Raises:
        OSError: A missing or unreadable file.
        ValueError: No record there, or a source in none of the forms above (one line).
    """
    text = str(source)
    if not is_mlflow_source(text) and (exported := exported_record(text)) is not None:
        return Provenance.from_dict(exported)
    if not is_mlflow_source(text):
        if (Path(text) / "config.json").is_file():  # a Hugging Face folder, not from export
            raise ValueError(
                f"{text} is a model folder with no {EXPORTED_RECORD} (no training record): "
                f"name the trained model instead (`depth eval {text} --source CKPT` keeps the "
                f"figures on CKPT), or make the folder with `depth export CKPT --format hf "
                f"OUT`, which writes {EXPORTED_RECORD} beside the weights")
        return provenance_from_checkpoint(text, trust)
    from mlflow.artifacts import download_artifacts

    from depth.tracking.publish import MODEL_ARTIFACT, RUN_ARTIFACT

    client, tracking_uri = reader_client(tracking_uri)
    with reading(text):
        if text.startswith("runs:/"):
            run_id = text.removeprefix("runs:/").split("/")[0]
            uri = f"{client.get_run(run_id).info.artifact_uri}/{RUN_ARTIFACT}"
        else:
            model_id = logged_model_id(client, text)
            uri = f"{client.get_logged_model(model_id).artifact_location}/{MODEL_ARTIFACT}"
        with tempfile.TemporaryDirectory() as tmp, quiet_download():
            path = download_artifacts(artifact_uri=uri, dst_path=tmp, tracking_uri=tracking_uri)
            data = json.loads(Path(path).read_text())
    return Provenance.from_dict(data)


def exported_record(directory: str | Path) -> dict[str, Any] | None:
    """The record `depth export` wrote in a model directory (its ``depth.json``), checked;
    ``None`` when there is none (a model directory from elsewhere).

    Raises:
        ValueError: One line: the file is not a depth record.
    """
    path = Path(directory) / EXPORTED_RECORD
    if not path.is_file():
        return None
    from depth.record.schema import check_record

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        check_record(data)
    except ValueError as err:  # JSONDecodeError is a ValueError
        raise ValueError(f"{path}: not a depth record ({' '.join(str(err).split())[:200]})"
                         ) from None
    return data


def resolve_parent(parent: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """A parent given as a record, a checkpoint path or an MLflow source, checked."""
    if isinstance(parent, Mapping):
        return check_parent(parent, "record")
    record = read_provenance(parent).to_dict()
    return check_parent(record, str(parent))


def find_logged_model(tracking_uri: str, digest: str) -> str | None:
    """The LoggedModel of a record (by ``depth.record_sha256``) in any experiment."""
    from depth.tracking.publish import find_model
    from depth.tracking.store import store_client

    return find_model(store_client(tracking_uri), None, digest)


@dataclass
class SourceCheckpoint:
    """A source resolved to its checkpoint.

    Attributes:
        checkpoint: The loaded checkpoint dict (its record at ``checkpoint["depth"]``).
        record: Its depth record.
        model_id: The LoggedModel the source names or the record was published as, if any.
        tracking_uri: The store of that LoggedModel.
    """

    checkpoint: dict[str, Any]
    record: dict[str, Any]
    model_id: str | None
    tracking_uri: str | None


def checkpoint_of(source: str, tracking_uri: str | None = None, trust: bool = False,
                  find_in_mlflow: bool = True) -> SourceCheckpoint:
    """Loads the checkpoint behind `source` and finds the LoggedModel its results belong to.

    An MLflow source needs the checkpoint file on its LoggedModel
    (``DepthCallback(log_checkpoints=True)``); it is downloaded to a temporary folder,
    loaded, and removed. For a checkpoint path, the LoggedModel is looked up by the
    record's digest when `find_in_mlflow` and the store answers.

    Raises:
        ValueError: One line: no such model, no checkpoint file behind an MLflow source, or
            no depth record in the checkpoint.
    """
    from depth.record.checkpoint_io import load_checkpoint

    model_id = None
    uri = None
    if is_mlflow_source(source):
        from mlflow.artifacts import download_artifacts

        client, uri = reader_client(tracking_uri)
        with reading(source):
            model_id = logged_model_id(client, source)
            model = client.get_logged_model(model_id)
            files = [a.path for a in client.list_logged_model_artifacts(model_id, "checkpoint")]
        if not files:
            raise ValueError(f"{source} ({model_id}) has no checkpoint file: train with "
                             "DepthCallback(log_checkpoints=True), or pass the checkpoint path")
        with tempfile.TemporaryDirectory(prefix="depth-eval-") as tmp:  # loaded, then gone
            with reading(source), quiet_download():
                path = Path(download_artifacts(
                    artifact_uri=f"{model.artifact_location}/{files[0]}", dst_path=tmp,
                    tracking_uri=uri))
            checkpoint = load_checkpoint(path, trust=trust)
    else:
        checkpoint = load_checkpoint(Path(source), trust=trust)
    record = checkpoint.get(CHECKPOINT_KEY)
    if not isinstance(record, dict):
        raise ValueError(f"{source} carries no depth record")
    from depth.record.schema import check_record

    try:  # before any measuring: a record of the wrong shape would fail only after it
        check_record(record)
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None
    if model_id is None and find_in_mlflow and record.get("record_sha256"):
        from depth.tracking.store import default_tracking_uri, unreachable

        uri = tracking_uri or default_tracking_uri()
        if unreachable(uri) is None:
            with reading(source):
                model_id = find_logged_model(uri, record["record_sha256"])
    return SourceCheckpoint(checkpoint, record, model_id, uri if model_id else None)
