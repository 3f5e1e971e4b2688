"""Test-wide settings: MLflow runs that DepthCallback opens by itself go to a store in a
temporary folder, never into the repository's mlruns/."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def _session_tracking_store(tmp_path_factory):
    store = tmp_path_factory.mktemp("mlflow-store")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}/mlflow.db")
    yield store
    mp.undo()
