"""Test-wide settings: MLflow runs that DepthCallback opens by itself go to a store in a
temporary folder, never into the repository's mlruns/.

Set for the whole session (module-scoped fixtures train before any per-test fixture
runs) and again before every test: ``MLFlowLogger(tracking_uri=...)`` calls
``mlflow.set_tracking_uri``, which also sets ``MLFLOW_TRACKING_URI`` in the environment,
so one test's server would otherwise leak into the next.
"""

from __future__ import annotations

import os

import pytest


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


@pytest.fixture(autouse=True)
def _tracking_store(_session_store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", _session_store)
    yield
