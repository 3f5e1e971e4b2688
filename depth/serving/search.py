"""The energy of an experiment's search: every run's joules, the kept models', the ratio.

A run's joules are its own fits' energy, read from its ``energy/joules`` history: the last
value of each history it logged, less what that history already held when the run began
(a fit resumed from another run's checkpoint starts at that run's total, which is counted
there). The carried part is the first point's cumulative joules less its interval's
(``energy/step_joules`` x the steps to the next point, or from step 0 with one point):
exact when a point is logged every step, and otherwise off by at most one logging interval
of a resumed fit. Runs without energy metrics that carry a ``depth.train_joules`` tag count
by that tag. Every run counts, whatever its end (failed, killed, deleted): their energy
was spent.

*Kept* models are the ones the search arrived at: LoggedModels of the experiment that
have a registered version, that `depth attribute` attributed a search to, or that were
named with ``--keep``. Their own depth is their record's ``train_joules`` (the newest
kept checkpoint of each run: an older one of the same run is part of it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

REPORT_TAG = "depth.report"  # `depth report`'s own runs: no training in them
HOW = ("each run's energy/joules history, less what a resumed history carried in, summed "
       "over every run (failed, killed and deleted ones too)")


@dataclass
class RunEnergy:
    """One run's own joules (``None``: it has depth metrics but no valid reading)."""

    run_id: str
    name: str
    status: str
    deleted: bool
    joules: float | None
    method: str | None


@dataclass
class ExperimentEnergy:
    """All runs of an experiment with depth energy, and the kept models' own training."""

    experiment: str
    experiment_id: str
    runs: list[RunEnergy]
    kept: dict[str, float] = field(default_factory=dict)  # model id -> train_joules

    @property
    def joules(self) -> float:
        return sum(r.joules for r in self.runs if r.joules is not None)

    @property
    def kept_joules(self) -> float:
        return sum(self.kept.values())

    @property
    def overhead(self) -> float | None:
        """All runs' joules over the kept models' own: 1.0 when nothing was thrown away."""
        return self.joules / self.kept_joules if self.kept_joules > 0 else None

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.runs)

    def summary(self) -> dict[str, Any]:
        """JSON-ready: what `depth report` prints and writes to ``search.json``."""
        return {"experiment": self.experiment, "experiment_id": self.experiment_id,
                "search_joules": self.joules, "runs": len(self.runs),
                "failed_runs": self.count("FAILED"), "killed_runs": self.count("KILLED"),
                "deleted_runs": sum(r.deleted for r in self.runs),
                "unmeasured_runs": [r.run_id for r in self.runs if r.joules is None],
                "kept_models": sorted(self.kept), "kept_joules": self.kept_joules,
                "overhead": self.overhead, "how": HOW,
                "run_joules": {r.run_id: r.joules for r in self.runs}}


def _history_joules(joules: list[Any], step_joules: list[Any]) -> float:
    """A run's own joules from its ``energy/joules`` and ``energy/step_joules`` points."""
    order = sorted(range(len(joules)), key=lambda i: (joules[i].timestamp, joules[i].step))
    per_step = {(m.timestamp, m.step): m.value for m in step_joules}
    total, stretch = 0.0, []
    for i in [*order, None]:  # a decrease starts another history (another model)
        if i is not None and (not stretch or joules[i].value >= stretch[-1].value):
            stretch.append(joules[i])
            continue
        first = stretch[0]
        steps = first.step if len(stretch) == 1 else min(first.step,
                                                         stretch[1].step - first.step)
        interval = per_step.get((first.timestamp, first.step), 0.0) * max(steps, 1)
        total += stretch[-1].value - max(0.0, first.value - interval)
        stretch = [joules[i]] if i is not None else []
    return total


def run_energy(client: Any, run: Any) -> RunEnergy | None:
    """The run's own joules, or ``None`` for a run without depth energy (not a fit)."""
    tags, metrics = run.data.tags, run.data.metrics
    info = run.info
    common = dict(run_id=info.run_id, name=info.run_name or info.run_id[:8],
                  status=info.status, deleted=info.lifecycle_stage == "deleted",
                  method=tags.get("depth.method"))
    if REPORT_TAG in tags:
        return None
    if "energy/joules" in metrics:
        history = client.get_metric_history(info.run_id, "energy/joules")
        steps = client.get_metric_history(info.run_id, "energy/step_joules")
        return RunEnergy(joules=_history_joules(history, steps), **common)
    if "depth.train_joules" in tags:
        try:
            return RunEnergy(joules=float(tags["depth.train_joules"]), **common)
        except ValueError:  # "unmeasured"
            return RunEnergy(joules=None, **common)
    return None


def kept_models(client: Any, experiment_id: str, keep: Iterable[str] = ()) -> dict[str, Any]:
    """LoggedModels of the experiment that were kept: registered, attributed, or in
    `keep` (model ids); by model id."""
    models = {m.model_id: m for m in client.search_logged_models([experiment_id])
              if "depth.step" in m.tags}
    from depth.tracking.sources import _logged_model_of

    unknown = sorted(set(keep) - set(models))
    if unknown:
        raise ValueError(f"--keep {', '.join(unknown)}: not a checkpoint LoggedModel of this "
                         "experiment (see the model_id column of `depth report --json`)")
    registered = {_logged_model_of(v) for v in client.search_model_versions()}
    kept = {i: m for i, m in models.items()
            if i in registered or i in set(keep)
            or any(k.startswith("depth.search.") for k in m.tags)}
    newest: dict[str, Any] = {}  # per run: an older checkpoint is part of the newer one
    for m in kept.values():
        other = newest.get(m.source_run_id)
        if other is None or int(m.tags["depth.step"]) > int(other.tags["depth.step"]):
            newest[m.source_run_id] = m
    return {m.model_id: m for m in newest.values()}


def experiment_energy(client: Any, experiment: Any, keep: Iterable[str] = ()
                      ) -> ExperimentEnergy:
    """Every run of `experiment` (an MLflow ``Experiment``) with depth energy, and its
    kept models' own ``train_joules``."""
    from mlflow.entities import ViewType

    runs = client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL,
                              max_results=50_000)
    energies = [e for run in runs if (e := run_energy(client, run)) is not None]
    kept = {}
    for model_id, model in kept_models(client, experiment.experiment_id, keep).items():
        try:
            kept[model_id] = float(model.tags.get("depth.train_joules", ""))
        except ValueError:  # unmeasured: no own depth to set the search against
            continue
    return ExperimentEnergy(experiment.name, experiment.experiment_id, energies, kept)


def report_lines(energy: ExperimentEnergy) -> list[str]:
    """What `depth report` prints under its table about the search."""
    stopped = [f"{n} {kind.lower()}" for kind in ("FAILED", "KILLED")
               if (n := energy.count(kind))]
    deleted = sum(r.deleted for r in energy.runs)
    if deleted:
        stopped.append(f"{deleted} deleted")
    lines = [f"search energy: {energy.joules:,.1f} J ({energy.joules / 3.6e6:.3g} kWh) over "
             f"all {len(energy.runs)} runs of the experiment"
             + (f" ({', '.join(stopped)})" if stopped else "")]
    unmeasured = sum(r.joules is None for r in energy.runs)
    if unmeasured:
        lines.append(f"  {unmeasured} run(s) have no valid reading and are not counted")
    if not energy.kept:
        lines.append("kept models: none (register one, attribute the search to it with "
                     "`depth attribute`, or name it with --keep m-ID): no overhead ratio")
        return lines
    lines.append(f"kept models' own training: {energy.kept_joules:,.1f} J "
                 f"({len(energy.kept)}: {', '.join(sorted(energy.kept))})")
    overhead = energy.overhead
    if overhead is not None:
        beyond = (f"; {1 - 1 / overhead:.0%} of the energy went to the search beyond them"
                  if overhead >= 1 else "; their histories began outside this experiment")
        lines.append(f"search overhead: {overhead:.3g}x (all runs' joules / the kept models' "
                     f"own{beyond})")
    return lines
