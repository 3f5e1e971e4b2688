"""Checks of command-line input made before any work starts: each failure is a
`UsageError` whose one line names the option and says what it accepts.

A measurement that runs for minutes must not be the place where a typo is found, so
everything that can be checked without measuring (bounds, devices, meters, tracking
URIs, where output goes) is checked here first.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from urllib.parse import urlsplit

from depth.cli.common import UsageError, one_line

# What MLflow 3 accepts as a tracking store (a "+driver" suffix is allowed on databases).
TRACKING_SCHEMES = ("", "file", "sqlite", "postgresql", "mysql", "mssql", "http", "https",
                    "databricks", "databricks-uc", "uc")


def bounded(name: str, value: float, low: float, high: float, unit: str = "") -> float:
    """`value` when it is a finite number in [`low`, `high`], else a `UsageError`."""
    if not (math.isfinite(value) and low <= value <= high):
        raise UsageError(f"--{name} takes {low:g} to {high:g}{unit} (got {value:g})")
    return value


def at_least(name: str, value: int, low: int) -> int:
    """`value` when it is at least `low`, else a `UsageError` naming ``--name``."""
    if value < low:
        raise UsageError(f"--{name} takes an integer >= {low} (got {value})")
    return value


def tracking_uri(name: str, uri: str | None) -> str | None:
    """`uri` (or ``MLFLOW_TRACKING_URI`` when `uri` is ``None``) if MLflow can open a
    store of its kind; the scheme is checked, not the server, which may be down for now."""
    where = f"--{name}"
    if uri is None:
        uri, where = os.environ.get("MLFLOW_TRACKING_URI") or None, "MLFLOW_TRACKING_URI"
        if uri is None:
            return None
    try:
        scheme = urlsplit(uri).scheme.split("+", 1)[0].lower()
    except ValueError:
        scheme = "?"
    if len(scheme) == 1 and uri[1:2] == ":":  # a Windows drive letter, a path
        scheme = ""
    if scheme not in TRACKING_SCHEMES:
        raise UsageError(f"{where} {uri!r}: MLflow has no store of kind {scheme!r}; give "
                         "sqlite:///PATH.db, http(s)://HOST:PORT, a database URI or a folder")
    return uri


def device(name: str, text: str | None) -> str | None:
    """`text` if it names a device this machine has: ``cpu``, ``cuda`` or ``cuda:N``."""
    if text is None:
        return None
    kind, _, index = text.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()) or (
            kind == "cpu" and index):
        raise UsageError(f"--{name} takes cpu, cuda or cuda:N (got {text!r})")
    if kind == "cuda":
        import torch

        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if visible == 0:
            raise UsageError(f"--{name} {text}: no CUDA GPU is visible here; use --{name} cpu")
        if index and int(index) >= visible:
            raise UsageError(f"--{name} {text}: only {visible} CUDA GPU(s) are visible "
                             f"(cuda:0 to cuda:{visible - 1})")
    return text


def meter(name: str, spec: str) -> str:
    """`spec` if that meter can be opened here (opened and closed at once); ``auto`` and
    ``estimate`` always can."""
    from depth.meters import METER_NAMES, MeterUnavailable, make_meter

    if spec not in METER_NAMES:
        raise UsageError(f"--{name} takes one of {', '.join(METER_NAMES)} (got {spec!r})")
    if spec in ("auto", "estimate"):
        return spec
    try:
        make_meter(spec).close()
    except MeterUnavailable as err:
        raise UsageError(f"--{name} {spec} cannot be used here ({one_line(err)}); use "
                         f"--{name} auto") from None
    return spec


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def writable_dir(name: str, path: str | Path) -> Path:
    """`path` if it is, or can be made, a folder this user may write in (nothing is
    created here)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--{name} {path} is a file, not a folder; give a folder")
    ancestor = _nearest_existing(path)
    if not ancestor.is_dir():
        raise UsageError(f"--{name} {path}: {ancestor} is a file, so no folder can be made "
                         "there; give another folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"--{name} {path}: {ancestor} is not writable; give another folder")
    return path


def output_file(name: str, path: str | Path, overwrite: bool) -> Path:
    """`path` if a file may be written there: its folder exists and is writable, and it
    is not a folder, nor (without `overwrite`) a file already."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"--{name} {path} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise UsageError(f"--{name} {path} exists; pass --force to overwrite it")
    folder = path.absolute().parent
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--{name} {path}: {folder} is a file, not a folder; give another "
                         "file name")
    if not folder.is_dir():
        raise UsageError(f"--{name} {path}: the folder {folder} does not exist; create it "
                         "first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"--{name} {path}: the folder {folder} is not writable")
    return path


def write_atomically(name: str, path: Path, text: str) -> None:
    """Writes `text` to `path` through a temporary file beside it, so that a failed write
    leaves whatever was there before intact."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise UsageError(f"--{name} {path}: cannot write it ({err.strerror or err})") from None
