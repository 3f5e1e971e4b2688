"""MLflow pages that explain themselves: the description of a LoggedModel, its run and its
registered versions.

MLflow shows the ``mlflow.note.content`` tag as the description of a LoggedModel, a run
and (as its own field) a registered version. depth writes there the summary of
`depth.record.summary`, and writes it again when `depth eval` or `depth amortize` add
figures to the model. A description someone else wrote is never overwritten: depth keeps
the digest of the text it wrote (``depth.note_sha256``) beside it, and rewrites only a
description that is empty or still that text.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from depth.record.summary import summary_markdown

NOTE = "mlflow.note.content"
NOTE_SHA = "depth.note_sha256"
MODEL_VERSIONS = "mlflow.modelVersions"


def note_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def depth_owns(note: str | None, tags: Mapping[str, str]) -> bool:
    """Whether a description may be (re)written by depth: there is none, or it is still
    the text depth wrote last."""
    return not note or tags.get(NOTE_SHA) == note_sha256(note)


def _latest(model: Any, key: str) -> float | None:
    values = [m for m in (model.metrics or []) if m.key == key]
    return float(max(values, key=lambda m: (m.timestamp, m.step)).value) if values else None


def inference_figures(model: Any) -> dict[str, Any] | None:
    """What `depth eval` last logged on a LoggedModel (``None`` before any eval)."""
    j_token = _latest(model, "inference/joules_per_token")
    if j_token is None:
        return None
    measured = model.tags.get("depth.inference_measured")
    return {"joules_per_token": j_token,
            "tokens_per_wh": _latest(model, "inference/tokens_per_wh"),
            "best_batch_size": _latest(model, "inference/best_batch_size"),
            "method": model.tags.get("depth.inference_method"),
            "measured": None if measured is None else measured == "true"}


def amortization_figures(tags: Mapping[str, str]) -> dict[str, Any] | None:
    """The current `depth amortize` scenario on a LoggedModel (``None`` before any)."""
    def number(key: str) -> float | None:
        try:
            return float(tags[f"depth.amortize.{key}"])
        except (KeyError, ValueError):  # absent, or "none"
            return None

    if number("amortized_j_per_token") is None or number("served_tokens") is None:
        return None
    return {"amortized_j_per_token": number("amortized_j_per_token"),
            "served_tokens": number("served_tokens"),
            "training_share": number("training_share")}


def model_extra_lines(model: Any) -> dict[str, str]:
    """Figures kept on the LoggedModel beside its training energy, shown in the summary
    each time it is written (so that a later eval does not drop them): the energy of the
    search that led to the model (``depth attribute``: `depth.record.search`)."""
    from depth.record.search import search_from_tags, search_lines

    lines = search_lines(search_from_tags(model.tags))
    return dict(line.split(": ", 1) for line in lines if ": " in line)


def describe_model(client: Any, model_id: str, record: Mapping[str, Any],
                   extra_lines: Mapping[str, str] | None = None) -> str:
    """Writes the summary of `record` (with the inference and amortization figures the
    LoggedModel holds) as the description of the LoggedModel, of the registered versions
    made from it, and of its source run when the run's latest checkpoint is this one;
    each only where depth owns the description. Returns the summary.

    Args:
        extra_lines: Further ``label: text`` bullets (added to `model_extra_lines`).
    """
    model = client.get_logged_model(model_id)
    text = summary_markdown(record, inference_figures(model), amortization_figures(model.tags),
                            {**model_extra_lines(model), **(extra_lines or {})})
    stamp = {NOTE: text, NOTE_SHA: note_sha256(text)}
    if depth_owns(model.tags.get(NOTE), model.tags):
        client.set_logged_model_tags(model_id, stamp)
    for listed in json.loads(model.tags.get(MODEL_VERSIONS) or "[]"):
        describe_version(client, str(listed.get("name")), str(listed.get("version")), text)
    if model.source_run_id:
        run = client.get_run(model.source_run_id)
        if run.data.tags.get("depth.record_sha256") == record.get("record_sha256") \
                and depth_owns(run.data.tags.get(NOTE), run.data.tags):
            for key, value in stamp.items():
                client.set_tag(run.info.run_id, key, value)
    return text


def describe_version(client: Any, name: str, version: str, text: str) -> None:
    """Sets `text` as a registered version's description, unless someone else wrote one."""
    from mlflow.exceptions import MlflowException

    try:
        found = client.get_model_version(name, version)
    except MlflowException:  # deleted since it was listed
        return
    if depth_owns(found.description, found.tags):
        client.update_model_version(name, version, description=text)
        client.set_model_version_tag(name, version, NOTE_SHA, note_sha256(text))
