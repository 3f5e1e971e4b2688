"""An S3-compatible object store on 127.0.0.1 for tests: moto's standalone server
(`python -m moto.server`, from ``moto[server]``), an in-memory implementation of the S3
HTTP API that boto3, and so MLflow's S3 artifact repository, talk to as to any S3
endpoint. Not MinIO or AWS: none of those installs from this machine's package registries."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.mlflow_server import free_port

ACCESS_KEY_ID = "depth-test-key"
SECRET_ACCESS_KEY = "depth-test-secret-3f9a1c"  # grepped for: no file may carry it


def missing() -> str | None:
    """Why the S3 test cannot run here, or ``None``."""
    try:
        import boto3  # noqa: F401
        import moto.server  # noqa: F401
    except ImportError as err:
        return f"moto[server] and boto3 are needed for the S3 artifact store test ({err})"
    return None


@contextmanager
def s3_server(root: Path, bucket: str) -> Iterator[dict[str, str]]:
    """Starts the server with `bucket` made; yields the environment an S3 client needs
    (``MLFLOW_S3_ENDPOINT_URL``, ``AWS_*``)."""
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                             "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=open(root / "moto.log", "w"), start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    env = {"MLFLOW_S3_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
           "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY, "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                    break
            except OSError as err:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto server did not start: "
                                       + (root / "moto.log").read_text()[-2000:]) from err
                time.sleep(0.2)
        client(env).create_bucket(Bucket=bucket)
        yield env
    finally:
        os.killpg(proc.pid, 9)
        proc.wait(timeout=15)


def client(env: dict[str, str]) -> Any:
    """A boto3 S3 client on the server (the test's own view of the bucket)."""
    import boto3

    return boto3.client("s3", endpoint_url=env["MLFLOW_S3_ENDPOINT_URL"],
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                        region_name=env["AWS_DEFAULT_REGION"])
