"""Test-wide settings: MLflow runs that DepthCallback opens by itself go to a store in a
temporary folder, never into the repository's mlruns/.

Set before every test: ``MLFlowLogger(tracking_uri=...)`` calls ``mlflow.set_tracking_uri``,
which also sets ``MLFLOW_TRACKING_URI`` in the environment, so one test's server would
otherwise leak into the next.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def _session_store(tmp_path_factory):
    return tmp_path_factory.mktemp("mlflow-store")


@pytest.fixture(autouse=True)
def _tracking_store(_session_store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{_session_store}/mlflow.db")
    yield
