"""`depth report`: every model of an MLflow experiment in one table, and three plots.

Rows are each run's latest checkpoint LoggedModel (``all_checkpoints``: every one), with
its depth record and whatever `depth eval` / `depth amortize` logged on it. The plots
(matplotlib, Agg) are written to a folder and logged as artifacts of the experiment's one
``depth-report`` run, which each report updates (never a run per call):

- ``cumulative_joules.png``: ``energy/joules`` against optimizer step, one line per run;
- ``tokens_per_wh_by_batch.png``: inference tokens/Wh against batch size, per model;
- ``amortization.png``: amortized J/token against served tokens, per model, with its
  break-even marked and the reference points drawn.
"""

from __future__ import annotations

import csv
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from depth.record.uncertainty import is_measured
from depth.serving import physics

COLUMNS = ("model", "run", "step", "depth_kwh", "j_per_param", "train_tokens_per_wh",
           "inference_tokens_per_wh", "best_batch", "ceiling_fraction", "landauer_ratio",
           "break_even_tokens", "method", "measured", "search_joules")


@dataclass
class Report:
    """A report: its rows, the files written, and the run the plots were logged to."""

    rows: list[dict[str, Any]]
    files: list[Path] = field(default_factory=list)
    run_id: str | None = None
    search: dict[str, Any] = field(default_factory=dict)  # `ExperimentEnergy.summary`
    search_lines: list[str] = field(default_factory=list)


def _metric(model: Any, key: str) -> float | None:
    values = [m for m in (model.metrics or []) if m.key == key]
    return float(max(values, key=lambda m: m.timestamp).value) if values else None


def _float_tag(model: Any, key: str) -> float | None:
    try:
        return float(model.tags[key])
    except (KeyError, ValueError):
        return None


def _by_batch(model: Any) -> list[tuple[int, float]]:
    latest: dict[int, tuple[int, float]] = {}
    for m in model.metrics or []:
        if m.key == "inference/tokens_per_wh_by_batch":
            if m.step not in latest or m.timestamp >= latest[m.step][0]:
                latest[m.step] = (m.timestamp, float(m.value))
    return sorted((step, value) for step, (_, value) in latest.items())


def collect(client: Any, tracking_uri: str, experiment_ids: str | list[str],
            all_checkpoints: bool = False) -> list[tuple[dict[str, Any], Any]]:
    """(row, LoggedModel) per model of the experiments, by run name and step."""
    ids = [experiment_ids] if isinstance(experiment_ids, str) else list(experiment_ids)
    models = [m for m in client.search_logged_models(ids) if "depth.step" in m.tags]
    if not all_checkpoints:
        latest: dict[str, Any] = {}
        for m in models:
            key = m.source_run_id
            if key not in latest or int(m.tags["depth.step"]) > int(latest[key].tags["depth.step"]):
                latest[key] = m
        models = list(latest.values())
    return _rows(models, tracking_uri)


def collect_registered(client: Any, tracking_uri: str, name: str
                       ) -> list[tuple[dict[str, Any], Any]]:
    """(row, LoggedModel) per version of the registered model `name` that has a depth
    record behind it; each row's model is ``models:/NAME/VERSION``."""
    from depth.tracking.sources import logged_model_id

    pairs = []
    for version in client.search_model_versions(f"name = '{name}'"):
        source = f"models:/{name}/{version.version}"
        try:
            model = client.get_logged_model(logged_model_id(client, source))
        except ValueError:  # a version registered from elsewhere: no LoggedModel behind it
            continue
        if "depth.step" in model.tags:
            for row, m in _rows([model], tracking_uri):
                pairs.append(({**row, "model": source, "version": int(version.version)}, m))
    pairs.sort(key=lambda pair: pair[0]["version"])
    return pairs


def _rows(models: list[Any], tracking_uri: str) -> list[tuple[dict[str, Any], Any]]:
    from depth.tracking.sources import read_provenance

    out = []
    for m in models:
        record = read_provenance(m.model_id, tracking_uri=tracking_uri)
        j_token = _metric(m, "inference/joules_per_token")
        train_wh = record.train_joules / physics.J_PER_WH
        depth_j = None if record.unmeasured else record.depth_joules  # no figure, not 0
        row = {
            "model": m.name, "model_id": m.model_id, "run": m.source_run_id,
            "step": int(m.tags["depth.step"]),
            "depth_kwh": None if depth_j is None else depth_j / 3.6e6,
            "depth_joules": depth_j,
            "j_per_param": depth_j / record.parameters if depth_j and record.parameters else None,
            "train_tokens_per_wh": (record.train_tokens / train_wh
                                    if record.train_tokens and train_wh > 0 else None),
            "inference_tokens_per_wh": _metric(m, "inference/tokens_per_wh"),
            "inference_j_per_token": j_token,
            "best_batch": _metric(m, "inference/best_batch_size"),
            "ceiling_fraction": _metric(m, "inference/ceiling_fraction"),
            "landauer_ratio": _metric(m, "inference/landauer_ratio"),
            "break_even_tokens": (depth_j / j_token) if j_token and depth_j else None,
            "method": record.method,
            "measured": is_measured(record.method) and record.measured is not False,
            "search_joules": _float_tag(m, "depth.search_joules"),  # `depth attribute`
        }
        out.append((row, m))
    out.sort(key=lambda pair: (pair[0]["model"], pair[0]["step"]))
    return out


def _finish(fig: Any, ax: Any, path: Path, title: str, drawn: bool = True) -> None:
    """Title (saying when there was nothing to draw), grid, legend, and the PNG."""
    import matplotlib.pyplot as plt

    ax.set_title(title + ("" if drawn else " (no depth eval yet)"))
    ax.grid(alpha=0.3, which="both")
    if drawn:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_joules(client: Any, runs: dict[str, str], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run_id, name in runs.items():
        points = sorted((m.step, m.value) for m in
                        client.get_metric_history(run_id, "energy/joules"))
        if points:
            ax.plot([s for s, _ in points], [v for _, v in points], label=name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cumulative joules (energy/joules)")
    _finish(fig, ax, path, "Training energy")


def _plot_batches(pairs: list[tuple[dict[str, Any], Any]], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = False
    for row, model in pairs:
        points = _by_batch(model)
        if points:
            ax.plot([b for b, _ in points], [v for _, v in points], marker="o", label=row["model"])
            drawn = True
    for ref in physics.REFERENCES:
        ax.axhline(ref.tokens_per_wh, ls=":", lw=1, color="grey")
        ax.annotate(ref.name, (1, ref.tokens_per_wh), fontsize=7, color="grey",
                    xytext=(2, 2), textcoords="offset points")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("inference tokens per Wh")
    _finish(fig, ax, path, "Inference efficiency by batch size", drawn)


def _plot_amortization(pairs: list[tuple[dict[str, Any], Any]], path: Path) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    from depth.serving.amortize import amortized_j_per_token

    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = False
    for row, _ in pairs:
        e = row["inference_j_per_token"]
        if not e or row["depth_joules"] is None:
            continue
        even = row["break_even_tokens"]
        n = np.logspace(np.log10(max(1.0, even / 1e4)), np.log10(even * 1e3), 200)
        ax.plot(n, [amortized_j_per_token(row["depth_joules"], x, e) for x in n],
                label=row["model"])
        ax.plot([even], [2 * e], marker="o", color=ax.lines[-1].get_color())
        ax.annotate(f"break-even {even:,.0f}", (even, 2 * e), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
        drawn = True
    for ref in physics.REFERENCES:
        ax.axhline(ref.joules_per_token, ls=":", lw=1, color="grey")
        ax.annotate(ref.name, (1, ref.joules_per_token), xycoords=("axes fraction", "data"),
                    fontsize=7, color="grey", ha="right", xytext=(-2, 2),
                    textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("served tokens")
    ax.set_ylabel("amortized joules per token (training + inference)")
    _finish(fig, ax, path, "Training energy spread over served tokens", drawn)


def _experiments(client: Any, names: list[str], tracking_uri: str) -> list[Any]:
    from depth.tracking.sources import reading
    from depth.tracking.store import redact

    found = []
    for name in names:
        with reading(f"experiment {name!r}"):  # of several, the one the server refuses
            experiment = client.get_experiment_by_name(name)
        if experiment is None:
            known = [e.name for e in client.search_experiments()]
            raise ValueError(f"no experiment {name!r} at {redact(tracking_uri)}"
                             + (f"; there are: {', '.join(known)}" if known else ""))
        found.append(experiment)
    return found


def make_report(experiment: str | list[str], tracking_uri: str, out_dir: Path,
                all_checkpoints: bool = False, log: bool = True,
                keep: list[str] | None = None,
                registered_model: str | None = None) -> Report:
    """Builds the table and plots for the models of `experiment` (one name or several),
    or of every version of `registered_model`; writes them to `out_dir` (and, with `log`,
    to the ``depth-report`` run of the first experiment, or of the latest version's). The
    search of each experiment (`depth.serving.search`: every run's joules beside the kept
    models', `keep` naming more of them) goes to ``search.json``.

    Raises:
        ValueError: No such experiment or registered model, or no depth models in it.
    """
    import matplotlib

    matplotlib.use("Agg")
    from depth.serving.search import experiment_energy, report_lines
    from depth.tracking.sources import reader_client, reading

    client, _ = reader_client(tracking_uri)  # one line within seconds if the server is down
    names = [experiment] if isinstance(experiment, str) else list(experiment)
    label = (f"models:/{registered_model}" if registered_model is not None
             else f"experiment {names[0]!r}" if len(names) == 1 else f"experiments {names}")
    with reading(label):  # one line for what MLflow refuses (HTTP 403: no permission)
        if registered_model is not None:
            client.get_registered_model(registered_model)  # one line if there is none
            pairs = collect_registered(client, tracking_uri, registered_model)
            ids = list(dict.fromkeys(m.experiment_id for _, m in pairs))
            experiments = [client.get_experiment(i) for i in ids]
            home = ids[-1] if ids else None
        else:
            experiments = _experiments(client, names, tracking_uri)
            ids = [e.experiment_id for e in experiments]
            energies_first = []
            for e in experiments:
                with reading(f"experiment {e.name!r}"):
                    energies_first.append(experiment_energy(client, e, keep or ()))
            pairs = collect(client, tracking_uri, ids, all_checkpoints)  # bad --keep: above
            home = ids[0]
        energies = (energies_first if registered_model is None
                    else [experiment_energy(client, e, keep or ()) for e in experiments])
        runs = {row["run"]: client.get_run(row["run"]).info.run_name or row["run"][:8]
                for row, _ in pairs}
    if not pairs:
        raise ValueError(f"{label} has no models with depth records")
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [out_dir / "cumulative_joules.png", out_dir / "tokens_per_wh_by_batch.png",
             out_dir / "amortization.png", out_dir / "models.csv", out_dir / "search.json"]
    _plot_joules(client, runs, files[0])
    _plot_batches(pairs, files[1])
    _plot_amortization(pairs, files[2])
    with open(files[3], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["model_id", *COLUMNS], extrasaction="ignore")
        writer.writeheader()
        for row, _ in pairs:
            writer.writerow(row)
    search = ([e.summary() for e in energies] if len(energies) != 1
              else energies[0].summary())
    files[4].write_text(json.dumps(search, indent=2))
    report = Report(rows=[row for row, _ in pairs], files=files,
                    search=search if isinstance(search, dict) else {"experiments": search},
                    search_lines=[line for e in energies for line in report_lines(e)])
    if log and home is not None:  # writing needs EDIT: a reader is told of --no-log
        with reading(f"{label}: writing its depth-report run (--no-log only reads)"):
            report.run_id = log_report(client, home, report)
    return report


REPORT_TAG = "depth.report"


def report_run(client: Any, experiment_id: str) -> str:
    """The experiment's one ``depth-report`` run (tagged ``depth.report``): the newest
    active one if there is any, else a new one. Reports replace their figures there
    rather than adding a run per call."""
    found = client.search_runs([experiment_id], filter_string=f"tags.`{REPORT_TAG}` = 'true'",
                               order_by=["attributes.start_time DESC"], max_results=1)
    if found:
        return found[0].info.run_id
    return client.create_run(experiment_id, run_name="depth-report",
                             tags={REPORT_TAG: "true"}).info.run_id


def log_report(client: Any, experiment_id: str, report: Report) -> str:
    """Writes `report` to the experiment's report run: its files replace the previous
    report's under ``depth-report/`` (same names), and its metrics' latest values are this
    report's. Returns the run's id."""
    import time

    from mlflow.entities import Metric

    run_id = report_run(client, experiment_id)
    with tempfile.TemporaryDirectory() as tmp:
        for path in report.files:
            (Path(tmp) / path.name).write_bytes(path.read_bytes())
        client.log_artifacts(run_id, tmp, "depth-report")
    now_ms = int(time.time() * 1000)
    kept = [r["depth_joules"] for r in report.rows if r.get("depth_joules") is not None]
    step = len(client.get_metric_history(run_id, "report/models"))  # one step per report
    client.log_batch(run_id, metrics=[
        Metric("report/models", float(len(report.rows)), now_ms, step),
        Metric("report/kept_depth_joules", float(sum(kept)), now_ms, step)])
    client.set_tag(run_id, "depth.report_updated", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    client.set_terminated(run_id)
    return run_id


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows as an aligned text table."""
    def fmt(value: Any, kind: str) -> str:
        if value is None:
            return "unmeasured" if kind == "kwh" else "-"
        if kind == "pct":
            return f"{value:.1%}" if value >= 0.001 else f"{value:.2e}"
        if kind == "int":
            return f"{value:,.0f}"
        if kind in ("g", "kwh"):
            return f"{value:.3g}"
        return str(value)

    spec = [("model", "model", "s"), ("depth kWh", "depth_kwh", "kwh"),
            ("J/param", "j_per_param", "g"), ("train tok/Wh", "train_tokens_per_wh", "int"),
            ("infer tok/Wh", "inference_tokens_per_wh", "int"), ("batch", "best_batch", "int"),
            ("ceiling", "ceiling_fraction", "pct"), ("x Landauer", "landauer_ratio", "g"),
            ("break-even tok", "break_even_tokens", "int"), ("method", "method", "s"),
            ("measured", "measured", "s"), ("search J", "search_joules", "g")]
    table = [[title for title, _, _ in spec]]
    table += [[fmt(row.get(key), kind) for _, key, kind in spec] for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(spec))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths))) for r in table)
