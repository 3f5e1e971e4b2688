"""A real `mlflow server` on 127.0.0.1 for tests (SQLite backend by default, local
artifacts; tests/support/postgres.py runs it on PostgreSQL with basic auth)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """One server that can be stopped and started again on the same port and store (an
    outage mid-run).

    Args:
        root: Folder for the SQLite store, artifacts and the server log.
        backend: Backend store URI (default: ``sqlite:///ROOT/server.db``).
        port: The port (default: a free one).
        app_name: ``--app-name`` (``basic-auth``: MLflow's users and permissions).
        workers: Server worker processes.
        artifacts: ``--artifacts-destination`` (default: ``ROOT/artifacts``; an
            ``s3://`` URI with the endpoint and keys in `env`).
    """

    env: dict[str, str] = {}  # extra environment of the server (the auth app's settings)

    def __init__(self, root: Path, backend: str | None = None, port: int | None = None,
                 app_name: str | None = None, workers: int = 1,
                 artifacts: str | None = None):
        self.root = root
        self.backend = backend or f"sqlite:///{root}/server.db"
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.app_name = app_name
        self.workers = workers
        self.artifacts = artifacts or str(root / "artifacts")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 90.0) -> str:
        self.root.mkdir(parents=True, exist_ok=True)
        log = open(self.root / "server.log", "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port",
             str(self.port), "--backend-store-uri", self.backend,
             "--artifacts-destination", self.artifacts,
             "--workers", str(self.workers),
             *(["--app-name", self.app_name] if self.app_name else [])],
            stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
            env={**os.environ, **self.env})
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=1) as r:
                    if r.status == 200:
                        return self.uri
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("mlflow server did not start: "
                                   + (self.root / "server.log").read_text()[-2000:])
            time.sleep(0.25)

    def stop(self) -> None:
        """Kills the server and its workers (an outage, not a graceful shutdown)."""
        if self.proc is None:
            return
        import signal

        try:  # uvicorn/gunicorn workers are children: take the whole group down
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            self.proc.kill()
        self.proc.wait(timeout=15)
        self.proc = None


@contextmanager
def mlflow_server(root: Path, timeout_s: float = 90.0,
                  backend: str | None = None) -> Iterator[str]:
    """Starts a server (on `backend`, default a new SQLite store under `root`) and yields
    its URI; stops it on exit."""
    server = MlflowServer(root, backend)
    try:
        yield server.start(timeout_s)
    finally:
        server.stop()
