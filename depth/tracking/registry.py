"""Registering any source as a version of a registered model (`depth register`).

A source names a LoggedModel (``m-<id>``, ``models:/m-<id>``, ``models:/NAME/VERSION``,
``runs:/<run_id>``: the run's latest checkpoint) or is a checkpoint file, whose record is
looked up in the store by its digest. The version is made by
`depth.tracking.publish.register_model`: linked to its LoggedModel, with its tags and its
summary as the description.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote


@dataclass
class Registered:
    """A version made by `register_source`.

    Attributes:
        name: The registered model.
        version: Its new version number (text, as MLflow gives it).
        model_id: The LoggedModel behind it.
        link: Where the version's page is (a URL for a server, else how to open one).
    """

    name: str
    version: str
    model_id: str
    link: str


def version_link(tracking_uri: str, name: str, version: str) -> str:
    """The UI address of a registered version: on the server itself for an http(s) store
    (credentials redacted), else the page an ``mlflow ui`` on that store serves."""
    from depth.tracking.store import redact

    page = f"#/models/{quote(name, safe='')}/versions/{version}"
    if tracking_uri.startswith(("http://", "https://")):
        return f"{redact(tracking_uri).rstrip('/')}/{page}"
    return (f"http://127.0.0.1:5000/{page} (after `mlflow ui --backend-store-uri "
            f"{redact(tracking_uri)}`)")


def model_of_source(client: Any, tracking_uri: str, source: str, trust: bool = False) -> str:
    """The LoggedModel id behind `source`.

    Raises:
        OSError: A missing or unreadable checkpoint file.
        ValueError: One line: no such model, or a checkpoint whose record the store lacks.
    """
    from depth.tracking.publish import find_model
    from depth.tracking.sources import is_mlflow_source, logged_model_id, read_provenance, reading
    from depth.tracking.store import redact

    if is_mlflow_source(source):
        with reading(source):
            model_id = logged_model_id(client, source)
            client.get_logged_model(model_id)  # exists
        return model_id
    record = read_provenance(source, trust=trust)
    with reading(source):
        model_id = find_model(client, None, record.record_sha256)
    if model_id is None:
        raise ValueError(f"{source}: its record was never published to {redact(tracking_uri)}"
                         " (train with MLflow tracking on, run `depth sync` for a spool, or "
                         "give --tracking-uri)")
    return model_id


def register_source(source: str, name: str, tracking_uri: str | None = None,
                    trust: bool = False) -> Registered:
    """Registers the LoggedModel behind `source` as a new version of `name`.

    Raises:
        OSError: A missing or unreadable checkpoint file.
        ValueError: One line: an unreachable store, no such model, or a name MLflow refuses.
    """
    from depth.tracking.publish import register_model
    from depth.tracking.sources import reader_client, reading

    if not name.strip():
        raise ValueError("NAME is empty: give the registered model's name, e.g. tiny-gpt")
    client, uri = reader_client(tracking_uri)
    model_id = model_of_source(client, uri, source, trust)
    with reading(f"NAME {name!r}"):
        version = register_model(model_id, name, client=client)
    return Registered(name, str(version.version), model_id,
                      version_link(uri, name, str(version.version)))
