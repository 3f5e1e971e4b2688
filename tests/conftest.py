"""Test-wide settings: MLflow runs that DepthCallback opens by itself go to a store in a
temporary folder, never into the repository's mlruns/.

Set for the whole session (module-scoped fixtures train before any per-test fixture
runs) and reset before and after every test: ``MLFlowLogger(tracking_uri=...)`` calls
``mlflow.set_tracking_uri``, which also sets ``MLFLOW_TRACKING_URI`` in the environment,
so one test's (or one module fixture's) store would otherwise leak into the next.
"""

from __future__ import annotations

import os
import sys

import pytest


@pytest.fixture(autouse=True, scope="session")
def _session_cache(tmp_path_factory):
    """depth's cache (grid intensities) in a temporary folder, not the user's ~/.cache."""
    os.environ["DEPTH_CACHE_DIR"] = str(tmp_path_factory.mktemp("depth-cache"))
    yield


@pytest.fixture(autouse=True, scope="session")
def _session_store(tmp_path_factory):
    store = tmp_path_factory.mktemp("mlflow-store")
    uri = f"sqlite:///{store}/mlflow.db"
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    yield uri
    if previous is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous


@pytest.fixture(scope="session")
def team_server(tmp_path_factory):
    """MLflow's basic-auth server on a throwaway PostgreSQL cluster, with users alice
    (EDIT) and bob (READ) on experiment ``team``: one for the session (it takes tens of
    seconds to start). Skipped, with the reason, where PostgreSQL or its driver is missing."""
    from tests.support.postgres import missing, team_server

    why = missing()
    if why is not None:
        pytest.skip(why)
    with team_server(tmp_path_factory.mktemp("team-server")) as server:
        yield server


@pytest.fixture()
def sqlite_run(tmp_path):
    """(tracking URI, MlflowClient, run id): one run on a fresh SQLite store in tmp_path."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("tests", artifact_location=str(tmp_path / "a"))
    return uri, client, client.create_run(experiment).info.run_id


def _reset(uri: str) -> None:
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None:  # MLFlowLogger sets mlflow's process-wide URI too
        mlflow.set_tracking_uri(uri)


@pytest.fixture(autouse=True)
def _tracking_store(_session_store):
    # Reset to the session store before and after every test, rather than restoring what
    # was there before: a module-scoped fixture that trains with an MLFlowLogger sets the
    # URI outside any test, and restoring would carry it into later modules' fixtures.
    _reset(_session_store)
    yield
    _reset(_session_store)
