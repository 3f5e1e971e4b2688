"""`depth attribute`: an experiment's search energy kept on the model it arrived at.

Kept the way inference figures are (`depth.serving.attach`): beside a checkpoint file as
``<checkpoint>.depth-search.json``, and on its MLflow LoggedModel as tags (one
``depth.search.<experiment id>`` JSON entry per experiment; ``depth.search_joules``,
``depth.search_kwh``, ``depth.search_beyond_joules``, ``depth.search_runs``) and as
``depth.search_joules``/``depth.search_kwh`` metrics. The sealed record is never touched:
its digest stays what it was. Attributing an experiment again replaces its entry.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from depth.record.search import ENTRY_TAG, J_PER_KWH, combine, search_from_tags, with_entry
from depth.serving.search import HOW, experiment_energy

SEARCH_SUFFIX = ".depth-search.json"
MAX_TAG_CHARS = 8000  # MLflow's limit on a tag value


def search_file(source: str) -> Path:
    """Where the search of a checkpoint file (or model folder) is kept: beside it."""
    return Path(source.rstrip("/") + SEARCH_SUFFIX)


def model_search(model: Any) -> dict[str, Any] | None:
    """The search kept in a LoggedModel's tags, or ``None``."""
    return search_from_tags(model.tags)


def attached_search(source: str, record_sha256: str | None = None,
                    tracking_uri: str | None = None) -> dict[str, Any] | None:
    """The search attributed to `source`, or ``None``: the file beside a checkpoint (when
    it belongs to the record `record_sha256`), or the tags of an MLflow source's model."""
    from depth.tracking.sources import is_mlflow_source

    if is_mlflow_source(source):
        from depth.tracking.sources import logged_model_id, reader_client, reading

        client, _ = reader_client(tracking_uri)
        with reading(source):
            return model_search(client.get_logged_model(logged_model_id(client, source)))
    path = search_file(source)
    if not path.is_file():
        return None
    try:
        search = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ValueError(f"{path} is not a search record (damaged?): attribute the "
                         "experiment again with `depth attribute`") from None
    if not isinstance(search, dict) or (record_sha256 and
                                        search.get("record_sha256") != record_sha256):
        return None  # another checkpoint's (the file was replaced since)
    return combine(search.get("record_sha256"), search.get("experiments") or {})


def _tag_entry(entry: Mapping[str, Any]) -> str:
    """An entry as a tag value, its run ids cut to fit MLflow's limit (the file keeps all)."""
    data = dict(entry)
    text = json.dumps(data, separators=(",", ":"))
    while len(text) > MAX_TAG_CHARS and data["run_ids"]:
        data["run_ids"] = data["run_ids"][: len(data["run_ids"]) // 2]
        data["run_ids_cut"] = True
        text = json.dumps(data, separators=(",", ":"))
    return text


def log_search(tracking_uri: str, model_id: str, search: Mapping[str, Any]) -> None:
    """The search's tags and metrics on a LoggedModel (tags are replaced; the metrics'
    newest value is the current one)."""
    from depth.serving.attach import _log_model_metrics

    tags = {f"{ENTRY_TAG}{key}": _tag_entry(e) for key, e in search["experiments"].items()}
    tags.update({"depth.search_joules": f"{search['search_joules']:.6g}",
                 "depth.search_kwh": f"{search['search_kwh']:.6g}",
                 "depth.search_beyond_joules": f"{search['beyond_joules']:.6g}",
                 "depth.search_runs": str(search["runs"])})
    _log_model_metrics(tracking_uri, model_id, [
        ("depth.search_joules", search["search_joules"], 0),
        ("depth.search_kwh", search["search_kwh"], 0)], tags)


def attribute_search(experiment: str, source: str, tracking_uri: str | None = None,
                     log: bool = True, trust: bool = False) -> dict[str, Any]:
    """Sums every run of `experiment` and keeps it on the model at `source` as its search.

    Returns the model's search document (`depth.record.search.combine`), with ``written``
    (the file beside a checkpoint) and ``logged_model`` set.

    Raises:
        OSError: A missing or unreadable checkpoint file.
        ValueError: One line: no such experiment, no runs with depth energy in it, no record
            at `source`, or an unreachable store.
    """
    from datetime import datetime, timezone

    from depth.serving.attach import resolve_target
    from depth.tracking.publish import find_model
    from depth.tracking.sources import is_mlflow_source, reader_client, reading
    from depth.tracking.store import redact

    client, uri = reader_client(tracking_uri)
    with reading(f"experiment {experiment!r}"):
        found = client.get_experiment_by_name(experiment)
    if found is None:
        names = [e.name for e in client.search_experiments()]
        raise ValueError(f"no experiment {experiment!r} at {redact(uri)}"
                         + (f"; there are: {', '.join(names)}" if names else ""))
    target = resolve_target(source, uri, log=True, trust=trust)
    energy = experiment_energy(client, found)
    if not energy.runs:
        raise ValueError(f"experiment {experiment!r} has no runs with depth energy metrics "
                         "(energy/joules): train with DepthCallback in it first")
    record = target.record
    digest = record.get("record_sha256")
    trained_here = find_model(client, [found.experiment_id], digest) is not None
    train_j = record.get("train_joules") if record.get("method") != "unmeasured" else None
    own = min(float(train_j), energy.joules) if trained_here and train_j is not None else 0.0
    entry = {"experiment": found.name, "experiment_id": found.experiment_id,
             "store": redact(uri), "joules": energy.joules, "own_joules": own,
             "beyond_joules": max(0.0, energy.joules - own),
             "kwh": energy.joules / J_PER_KWH, "runs": len(energy.runs),
             "run_ids": [r.run_id for r in energy.runs],
             "failed_runs": energy.count("FAILED"), "killed_runs": energy.count("KILLED"),
             "deleted_runs": sum(r.deleted for r in energy.runs),
             "unmeasured_runs": sum(r.joules is None for r in energy.runs),
             "attributed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
             "how": HOW, "methods": sorted({r.method for r in energy.runs if r.method})}
    existing = attached_search(source, digest, uri)
    if existing is None and target.model_id:  # a checkpoint whose model has one already
        existing = model_search(client.get_logged_model(target.model_id))
    search = with_entry(existing, digest, found.experiment_id, entry)
    search["written"], search["logged_model"] = None, None
    if not is_mlflow_source(source):
        path = search_file(source)
        path.write_text(json.dumps({k: v for k, v in search.items()
                                    if k not in ("written", "logged_model")}, indent=2))
        search["written"] = str(path)
    if log and target.model_id and target.tracking_uri:
        log_search(target.tracking_uri, target.model_id, search)
        search["logged_model"] = target.model_id
        from depth.tracking.pages import describe_model
        from depth.tracking.store import store_client

        describe_model(store_client(target.tracking_uri), target.model_id, record)
    return search
