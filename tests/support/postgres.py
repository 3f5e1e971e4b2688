"""A throwaway PostgreSQL cluster on 127.0.0.1 for tests and benchmarks (Debian's
`postgresql` package), and MLflow's basic-auth server on it.

initdb refuses to run as root: as root, every PostgreSQL command runs as the ``postgres``
user, in a data folder under /tmp that it owns (pytest's own tmp folders are private to
root). The cluster accepts password logins only over TCP (scram-sha-256), as a team's
database would.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.mlflow_server import MlflowServer, free_port

SUPERUSER = "postgres"


def find_bin() -> Path | None:
    """The folder of PostgreSQL's server programs (initdb, pg_ctl), newest version first;
    ``None`` when PostgreSQL is not installed."""
    on_path = shutil.which("initdb")
    if on_path:  # often a link to /usr/lib/postgresql/N/bin/initdb, beside psql and pg_ctl
        return Path(on_path).resolve().parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(found[-1]).parent if found else None


def missing() -> str | None:
    """Why a PostgreSQL-backed MLflow server cannot run here (to skip with), or ``None``."""
    if find_bin() is None:
        return ("PostgreSQL is not installed (.ci/run installs Debian's `postgresql`; "
                "locally: apt-get install postgresql)")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without `runuser` (initdb refuses root)"
    try:
        import psycopg  # noqa: F401  (SQLAlchemy 2.1: postgresql:// means psycopg 3)
    except ImportError:
        return "psycopg is not installed (pip install -e '.[test]')"
    try:
        import flask_wtf  # noqa: F401  (mlflow[auth]: the basic-auth app)
    except ImportError:
        return "mlflow[auth] is not installed (pip install -e '.[test]')"
    return None


class PostgresCluster:
    """A cluster in a fresh folder under /tmp, listening on 127.0.0.1:`port`.

    Args:
        password: The superuser's password (TCP logins need one).
    """

    def __init__(self, password: str = "pg-superuser-pw") -> None:
        self.bin = find_bin()
        if self.bin is None:
            raise RuntimeError(missing() or "no PostgreSQL")
        self.password = password
        self.root = Path(tempfile.mkdtemp(prefix="depth-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self._as_root = os.geteuid() == 0
        if self._as_root:
            shutil.chown(self.root, SUPERUSER, SUPERUSER)

    def _run(self, program: str, *args: str, stdin: str | None = None) -> str:
        command = [str(self.bin / program), *args]
        if self._as_root:
            command = ["runuser", "-u", SUPERUSER, "--", *command]
        done = subprocess.run(command, input=stdin, capture_output=True, text=True,
                              cwd=self.root, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{program} failed: {done.stderr[-2000:]}")
        return done.stdout

    def start(self) -> "PostgresCluster":
        """initdb (once), then the server; returns when it accepts connections."""
        if not self.data.exists():
            pwfile = self.root / "pwfile"
            pwfile.write_text(self.password + "\n")
            if self._as_root:
                shutil.chown(pwfile, SUPERUSER, SUPERUSER)
            self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--pwfile", str(pwfile),
                      "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
                      "--no-sync", "--no-instructions")
            pwfile.unlink()
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "postgres.log"), "-w",
                  "-o", f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                  "-c fsync=off -c max_connections=200", "start")
        return self

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Runs `statement` with psql as the superuser, over the unix socket."""
        return self._run("psql", "-h", str(self.root), "-p", str(self.port), "-U", SUPERUSER,
                         "-d", database, "-v", "ON_ERROR_STOP=1", "-qAt", "-c", statement)

    def create_database(self, name: str, owner: str, password: str) -> str:
        """A role `owner` with `password` and a database `name` it owns; returns its
        SQLAlchemy URI (over TCP, with the password)."""
        self.sql(f"CREATE ROLE {owner} LOGIN PASSWORD '{password}'")
        self.sql(f"CREATE DATABASE {name} OWNER {owner}")
        return f"postgresql://{owner}:{password}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        """Stops the server (immediately) and removes the cluster."""
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        except RuntimeError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)


ADMIN = "admin"
ADMIN_PASSWORD = "admin-pw-5b1e"


class AuthServer(MlflowServer):
    """`mlflow server --app-name basic-auth` with its tracking store and its users in
    PostgreSQL (two databases), and artifacts in a local folder.

    Args:
        root: Folder for the auth config, the artifacts and the server log.
        cluster: The running PostgreSQL cluster.
        workers: Server worker processes.
    """

    def __init__(self, root: Path, cluster: PostgresCluster, workers: int = 2,
                 name: str = "mlflow") -> None:
        backend = cluster.create_database(name, f"{name}_user", f"{name}-db-pw")
        self.auth_db = cluster.create_database(f"{name}_auth", f"{name}_auth_user",
                                               f"{name}-auth-db-pw")
        super().__init__(root, backend=backend, app_name="basic-auth", workers=workers)
        self.cluster, self.database = cluster, name
        root.mkdir(parents=True, exist_ok=True)
        self.auth_config = root / "basic_auth.ini"
        # auth_cache_ttl_seconds: without it, every request checks the password hash
        # (scrypt): ~0.1 s of CPU a request on an idle core, 10 s on this busy 2-core machine,
        # so that every log-batch timed out
        self.auth_config.write_text(
            "[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
            f"database_uri = {self.auth_db}\nadmin_username = {ADMIN}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            "auth_cache_ttl_seconds = 60\n")
        self.env = {"MLFLOW_AUTH_CONFIG_PATH": str(self.auth_config),
                    "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
                    "MLFLOW_FLASK_SERVER_SECRET_KEY": "depth-tests-secret-key"}

    def dump(self) -> str:
        """The tracking database as SQL (pg_dump)."""
        return self.cluster._run("pg_dump", "-h", str(self.cluster.root), "-p",
                                 str(self.cluster.port), "-U", SUPERUSER, self.database)

    team_id: str = ""  # the experiment `team_server` made for the team

    def as_user(self, user: str, password: str) -> str:
        """The server's URI with `user:password@` in it."""
        return self.uri.replace("http://", f"http://{user}:{password}@")


def admin_call(server: MlflowServer, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POSTs `body` as JSON to the server's `path` as the admin (MLflow's auth REST API,
    the same request as ``curl -u admin:PASSWORD -X POST -H 'Content-Type:
    application/json' -d BODY URI/PATH``)."""
    import base64
    import json
    import urllib.request

    token = base64.b64encode(f"{ADMIN}:{ADMIN_PASSWORD}".encode()).decode()
    request = urllib.request.Request(
        f"{server.uri}{path}", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Basic {token}"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        text = reply.read().decode()
    return json.loads(text) if text.strip() else {}


def add_user(server: MlflowServer, user: str, password: str) -> None:
    """A non-admin user (``POST /api/2.0/mlflow/users/create``)."""
    admin_call(server, "/api/2.0/mlflow/users/create", {"username": user, "password": password})


def grant(server: MlflowServer, user: str, resource_type: str, resource_id: str,
          permission: str) -> None:
    """Gives `user` `permission` (READ, EDIT, MANAGE) on one experiment (by id) or
    registered model (by name) (``POST /api/3.0/mlflow/users/permissions/grant``)."""
    admin_call(server, "/api/3.0/mlflow/users/permissions/grant",
               {"username": user, "resource_type": resource_type,
                "resource_id": resource_id, "permission": permission})


ALICE, ALICE_PASSWORD = "alice", "alice-pw-7f3a-SECRET"  # trains: EDIT on "team"
BOB, BOB_PASSWORD = "bob", "bob-pw-91c2-SECRET"  # reads: READ on "team"
TEAM_EXPERIMENT = "team"


@contextmanager
def team_server(root: Path, workers: int = 1) -> Iterator[AuthServer]:
    """A PostgreSQL cluster, MLflow's basic-auth server on it, and what an admin sets up
    for a team: the experiment ``team`` (its id in ``server.team_id``), ``alice`` (EDIT on
    it) and ``bob`` (READ). Stops both servers on exit."""
    from mlflow import MlflowClient

    cluster = PostgresCluster()
    server = None
    try:
        cluster.start()
        server = AuthServer(root, cluster, workers=workers)
        server.start()
        admin = MlflowClient(server.as_user(ADMIN, ADMIN_PASSWORD))
        server.team_id = admin.create_experiment(TEAM_EXPERIMENT)
        for user, password, permission in ((ALICE, ALICE_PASSWORD, "EDIT"),
                                           (BOB, BOB_PASSWORD, "READ")):
            add_user(server, user, password)
            grant(server, user, "experiment", server.team_id, permission)
        yield server
    finally:
        if server is not None:
            server.stop()
        cluster.stop()
