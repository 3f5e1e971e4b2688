"""The MLflow store: the default URI, runs depth opens, reachability, and redaction.

mlflow is imported only where used, so that this module costs nothing to import on a
machine that only meters.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def redact(uri: str) -> str:
    """A URI fit to print or store: any ``user:password@`` replaced by ``***@``.

    MLflow also takes credentials from ``MLFLOW_TRACKING_USERNAME``/``_PASSWORD`` and
    ``_TOKEN``, which depth never reads, writes or logs.
    """
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri
    if "@" not in parts.netloc:
        return uri
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"***@{host}"))


_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/\s@'\"]*@")


def redact_text(text: str) -> str:
    """`text` (an error message) with the ``user:password@`` of every URI in it replaced by
    ``***@``: MLflow names the full request URL, credentials included, when one fails."""
    return _USERINFO.sub(r"\1***@", text)


def split_credentials(uri: str) -> tuple[str, str | None]:
    """(`uri` without its ``user:password@``, the ``Authorization`` header value for them,
    or ``None`` when it has none)."""
    import base64
    from urllib.parse import unquote, urlsplit, urlunsplit

    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri, None
    userinfo, host = parts.netloc.rsplit("@", 1)
    user, _, password = userinfo.partition(":")
    token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode()
    return urlunsplit(parts._replace(netloc=host)), f"Basic {token}"


@contextmanager
def urls_unprinted(uri: str) -> Iterator[None]:
    """While in it, MLflow does not print a run's URL to stdout when the run ends on a
    server (it would print `uri`'s ``user:password@`` with it); for a URI without
    credentials, nothing changes."""
    from urllib.parse import urlsplit

    name = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
    previous = os.environ.get(name)
    quiet = "@" in urlsplit(uri).netloc
    if quiet:
        os.environ[name] = "true"
    try:
        yield
    finally:
        if quiet and previous is None:
            os.environ.pop(name, None)
        elif quiet:
            os.environ[name] = previous


DEFAULT_STORE_DIR = Path("mlruns")


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the local SQLite store under ``mlruns/``.

    MLflow 3 refuses the old ``./mlruns`` file store, so the default is
    ``sqlite:///mlruns/mlflow.db`` (relative to the working directory), with artifacts in
    ``mlruns/artifacts``.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    DEFAULT_STORE_DIR.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{DEFAULT_STORE_DIR}/mlflow.db"


def _authorization(uri: str) -> tuple[str, str | None, str]:
    """(`uri` without credentials, the ``Authorization`` header MLflow's client would send,
    where the credentials come from): the URI's ``user:password@`` (requests sends those
    over any header), else ``MLFLOW_TRACKING_USERNAME``/``_PASSWORD``, else
    ``MLFLOW_TRACKING_TOKEN``."""
    import base64

    base, authorization = split_credentials(uri)
    if authorization is not None:
        return base, authorization, "the URI's user:password@"
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        return base, f"Basic {token}", "MLFLOW_TRACKING_USERNAME/_PASSWORD"
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        return base, f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}", "MLFLOW_TRACKING_TOKEN"
    return base, None, "none given (MLFLOW_TRACKING_USERNAME/_PASSWORD or user:password@)"


def unreachable(uri: str, timeout_s: float = 2.0) -> str | None:
    """Why a tracking server cannot be used now (one line, credentials redacted), or
    ``None`` when it answers.

    Only ``http(s)://`` URIs are probed: ``GET /health``, then one authenticated read
    (``experiments/search``, one result) with the credentials MLflow's client would send,
    since an authenticating server (MLflow's basic-auth app) answers ``/health`` to anyone
    and refuses wrong credentials only on the API. MLflow's own client would retry an
    unreachable server for minutes, stalling whoever asked.
    """
    if not uri.startswith(("http://", "https://")):
        return None
    import urllib.error
    import urllib.request

    base, authorization, whence = _authorization(uri)
    base = base.rstrip("/")
    for path in ("/health", "/api/2.0/mlflow/experiments/search?max_results=1"):
        request = urllib.request.Request(base + path)
        if authorization is not None:
            request.add_header("Authorization", authorization)
        try:
            with urllib.request.urlopen(request, timeout=timeout_s):
                pass
        except urllib.error.HTTPError as err:
            if err.code == 401:
                return f"HTTP 401: it refuses the credentials, from {whence}"
            if path == "/health":
                return None  # it answered: a server without /health, or behind a proxy
        except (OSError, ValueError) as err:
            if path != "/health":
                return None  # it answered /health: a slow read is the writer's to retry
            return redact_text(f"{type(err).__name__}: {getattr(err, 'reason', err)}")
    return None


_REFUSED = re.compile(r"\b(PERMISSION_DENIED|UNAUTHENTICATED|error code 40[13])\b")


def refused(err: BaseException) -> bool:
    """Whether the server refused the credentials or the permission (HTTP 401/403) in
    `err`, an MLflow error: asking again will not help (the writer spools at once, instead
    of after its whole retry budget; `depth sync` names credentials that may write)."""
    code = getattr(err, "error_code", None)
    return code in ("PERMISSION_DENIED", "UNAUTHENTICATED") or bool(_REFUSED.search(str(err)))


def artifacts_beside(uri: str) -> str | None:
    """For a SQLite store, ``artifacts/`` next to the database file (MLflow's own default,
    ``./mlruns`` under the working directory, would scatter artifacts wherever a script
    runs); for a tracking server, ``None``: the server decides."""
    if not uri.startswith("sqlite:///"):
        return None
    database = Path(uri[len("sqlite:///"):])
    return (database.parent / "artifacts").resolve().as_uri()


_READY: set[str] = set()  # SQLite stores this process has opened (tables made)


def prepare_store(uri: str) -> None:
    """Opens a ``sqlite:///`` store once per process under a lock file beside it
    (``mlflow.db.lock``), so that its tables are made, or upgraded after an MLflow update,
    by one process at a time; a no-op for servers and for stores already opened here.

    MLflow creates and migrates a SQLite store in whichever process opens it first, with no
    lock: two at once (a fit and its writer process, two fits on one store) fail with
    "table _alembic_tmp_... already exists" or "duplicate column name", and the loser can
    leave the store half-migrated, unusable to every later run.
    """
    if not uri.startswith("sqlite:///") or uri in _READY:
        return
    database = Path(uri[len("sqlite:///"):])
    try:
        import fcntl
    except ImportError:  # Windows: MLflow alone, as before
        fcntl = None
    from mlflow import MlflowClient

    if fcntl is None or not database.parent.is_dir():  # MLflow says what is wrong
        MlflowClient(uri).search_experiments(max_results=1)
    else:
        with open(database.with_name(database.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            MlflowClient(uri).search_experiments(max_results=1)
    _READY.add(uri)


def store_client(uri: str) -> Any:
    """An ``mlflow.MlflowClient`` on `uri`, its SQLite store opened under the lock
    (`prepare_store`)."""
    from mlflow import MlflowClient

    prepare_store(uri)
    return MlflowClient(uri)


def open_run(experiment_name: str, run_name: str | None = None,
             tracking_uri: str | None = None, token: str | None = None) -> tuple[str, str]:
    """Creates a run (and its experiment if needed); returns (tracking URI, run id).

    With a `token` (tagged ``depth.open_token``), a run already created with it is returned
    instead: a retry after a request that timed out on a busy server, which may have created
    the run all the same, does not leave a second, empty run.
    """
    from mlflow.exceptions import MlflowException

    uri = tracking_uri or default_tracking_uri()
    client = store_client(uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is not None:
        experiment_id = experiment.experiment_id
    else:
        try:
            experiment_id = client.create_experiment(experiment_name,
                                                     artifact_location=artifacts_beside(uri))
        except MlflowException as err:  # another fit created it first (a team's first day)
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment_id = client.get_experiment_by_name(experiment_name).experiment_id
    tags = {"depth.own_run": "true"}
    if token is not None:
        tags["depth.open_token"] = token
        earlier = client.search_runs([experiment_id], f"tags.`depth.open_token` = '{token}'",
                                     max_results=1)
        if earlier:
            return uri, earlier[0].info.run_id
    run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    return uri, run.info.run_id


def end_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    """Ends a run the callback opened: ``FINISHED``, ``FAILED`` (the fit raised) or
    ``KILLED`` (interrupted)."""
    with urls_unprinted(tracking_uri):
        store_client(tracking_uri).set_terminated(run_id, status)
