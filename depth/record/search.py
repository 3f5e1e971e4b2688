"""The energy of the search that arrived at a model: ``search_joules``, apart from training.

A model's depth is all the irreversible processing needed to arrive at it, and most of a
project's energy goes to runs whose models are thrown away (OLMo 3's report counts 82 % of
its compute in experiments and failed runs). `depth attribute` sums every run of an
experiment that carries depth energy metrics (failed, killed and deleted ones too) and
keeps that figure beside the model's sealed record, never in it and never in
``train_joules``/``depth_joules``.

A *search* document (what is kept beside a checkpoint, or in LoggedModel tags)::

    {"record_sha256": <the model's record>, "experiments": {<experiment id>: <entry>},
     "search_joules": ..., "own_joules": ..., "beyond_joules": ..., "runs": ...}

An entry is one experiment's attribution (`depth.serving.search.experiment_entry`):
``experiment``, ``joules`` (all its runs), ``own_joules`` (the part that is this model's
own training, when it was trained there), ``beyond_joules``, ``runs``, ``run_ids``,
``failed_runs``, ``killed_runs``, ``deleted_runs``, ``attributed_at``, ``how``,
``methods``. Attributing an experiment again replaces its entry, so nothing is added twice.
Framework-free: the lines below go into cards, summaries and the CLI alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

J_PER_KWH = 3.6e6
ENTRY_TAG = "depth.search."  # + experiment id: that experiment's entry, as JSON


def combine(record_sha256: str | None, experiments: Mapping[str, Mapping[str, Any]]
            ) -> dict[str, Any]:
    """The search document for `experiments` (one entry each), with its totals."""
    entries = {key: dict(entry) for key, entry in sorted(experiments.items())}
    total = sum(float(e["joules"]) for e in entries.values())
    own = sum(float(e.get("own_joules") or 0.0) for e in entries.values())
    return {"record_sha256": record_sha256, "experiments": entries,
            "search_joules": total, "search_kwh": total / J_PER_KWH, "own_joules": own,
            "beyond_joules": max(0.0, total - own),
            "runs": sum(int(e["runs"]) for e in entries.values())}


def with_entry(search: Mapping[str, Any] | None, record_sha256: str | None, key: str,
               entry: Mapping[str, Any]) -> dict[str, Any]:
    """`search` with the entry of experiment `key` set (replaced when it was there)."""
    experiments = dict((search or {}).get("experiments") or {})
    experiments[key] = dict(entry)
    return combine(record_sha256, experiments)


def search_from_tags(tags: Mapping[str, str]) -> dict[str, Any] | None:
    """The search kept in a LoggedModel's tags (``depth.search.<experiment id>``), or
    ``None``: what a summary built from the tags passes to `search_lines`."""
    import json

    entries = {}
    for key, value in tags.items():
        if key.startswith(ENTRY_TAG):
            try:
                entries[key.removeprefix(ENTRY_TAG)] = json.loads(value)
            except ValueError:  # edited by hand: not ours to read
                continue
    return combine(tags.get("depth.record_sha256"), entries) if entries else None


def _joules(value: float) -> str:
    return f"{value:,.1f} J ({value / J_PER_KWH:.3g} kWh)"


def search_lines(search: Mapping[str, Any] | None) -> list[str]:
    """Markdown-free lines that say what a model's search cost; empty without one.

    E.g. ``Search energy: 1,234.5 J (0.000343 kWh) over 5 runs of experiment 'sweep'
    (1 failed, 1 killed), attributed 2026-11-23T10:00:00+00:00.``
    """
    if not search or not search.get("experiments"):
        return []
    entries = list(search["experiments"].values())
    names = ", ".join(repr(e["experiment"]) for e in entries)
    stopped = [f"{n} {kind}" for kind in ("failed", "killed", "deleted")
               if (n := sum(int(e.get(f"{kind}_runs") or 0) for e in entries))]
    when = max(str(e.get("attributed_at", "")) for e in entries)
    total, beyond = float(search["search_joules"]), float(search["beyond_joules"])
    lines = [f"Search energy: {_joules(total)} over {search['runs']} runs of experiment"
             f"{'s' if len(entries) > 1 else ''} {names}"
             + (f" ({', '.join(stopped)})" if stopped else "") + f", attributed {when}."]
    share = f" ({beyond / total:.0%} of it)" if total > 0 else ""
    lines.append(f"Beyond this model's own training: {_joules(beyond)}{share}. Kept apart: "
                 "not part of train_joules or depth_joules.")
    methods = sorted({m for e in entries for m in e.get("methods") or []})
    lines.append(f"How: {entries[0].get('how', 'energy/joules of each run, summed')}"
                 + (f"; methods {', '.join(methods)}" if methods else "") + ".")
    return lines


def card_fields(search: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``depth`` model-card fields of a search (none without one)."""
    if not search or not search.get("experiments"):
        return {}
    entries = search["experiments"].values()
    return {"search_joules": search["search_joules"], "search_kwh": search["search_kwh"],
            "search_beyond_joules": search["beyond_joules"], "search_runs": search["runs"],
            "search_experiments": [e["experiment"] for e in entries],
            "search_attributed_at": max(str(e.get("attributed_at", "")) for e in entries)}
