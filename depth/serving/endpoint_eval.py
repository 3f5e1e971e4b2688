"""`depth eval --endpoint`: a served model's tokens/Wh measured with a meter that covers
the server, said plainly, and attached to the trained model it belongs to (``--source``).

What each meter covers, for a server on this machine:

- NVML (``gpu:N``): whole GPUs; every process on them counts, not only the server's;
- RAPL (``cpu:N``/``dram:N``): the whole CPU package and DRAM; every process on the
  machine counts, this client's own request threads included;
- the estimate (no sensor): CodeCarbon's process model of *the server's process* (found
  by the port it listens on, or ``--server-pid``) and its children: their CPU time x TDP
  share, plus the machine's RAM model. The estimate of *this* process, which `depth eval`
  uses for a checkpoint, would see only the client sending requests, not the server's
  work: without the server's process the estimate is refused.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from depth.serving.attach import (
    Target,
    Warn,
    log_inference_metrics,
    previous_eval,
    python_warning,
    tie_warning,
    write_eval,
)
from depth.serving.endpoint import Client, EndpointConfig, measure_endpoint
from depth.serving.evaluation import energy_basis
from depth.serving.physics import wh_per_million_tokens

MLFLOW_PREFIXES = ("runs:/", "models:/", "m-")


def local_server(endpoint: str) -> tuple[str, int]:
    """(host, port) of `endpoint` when it is a server on this machine.

    Raises:
        ValueError: One line: not an http(s) URL, or a host that is not this machine
            (this machine's meters cannot see another machine's devices).
    """
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--endpoint takes http://HOST:PORT/v1 (got {endpoint!r})")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = {a[4][0] for a in socket.getaddrinfo(parts.hostname, port)}
    except (OSError, ValueError) as err:
        raise ValueError(f"--endpoint {endpoint}: {err}") from None
    if not addresses & _local_addresses():
        raise ValueError(f"--endpoint {endpoint}: {parts.hostname} is not this machine; depth "
                         "reads this machine's meters, so run depth eval where the server runs")
    return parts.hostname, port


def _local_addresses() -> set[str]:
    import psutil

    found = {a.address.split("%")[0] for addrs in psutil.net_if_addrs().values()
             for a in addrs if a.family in (socket.AF_INET, socket.AF_INET6)}
    return found | {"0.0.0.0", "::", "127.0.0.1", "::1"}  # any-address and loopback


def listening_pid(port: int) -> int | None:
    """The process listening on TCP `port` here, if this user may see it."""
    import psutil

    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.Error:
        return None
    pids = {c.pid for c in connections if c.status == psutil.CONN_LISTEN
            and c.laddr and c.laddr.port == port and c.pid}
    return pids.pop() if len(pids) == 1 else None


def endpoint_meter(meter: Any, pid: int | None, port: int) -> tuple[Any, list[str]]:
    """The meter for a server on this machine (``auto``, a name, or an `EnergyMeter`), and
    what it covers, one line per backend.

    Raises:
        ValueError: One line: the estimate would be needed but the server's process is not
            known.
    """
    from depth.meters import auto_meter, make_meter
    from depth.meters.estimate import EstimateMeter, ProcessCpuLoad

    kwargs = {"cpu_load": ProcessCpuLoad(pid=pid)} if pid is not None else {}
    if meter == "auto":
        energy = auto_meter(estimate_kwargs=kwargs)
    elif meter == "estimate":
        energy = auto_meter(gpu="off", cpu="estimate", estimate_kwargs=kwargs)
    else:
        energy = make_meter(meter)
    parts = getattr(energy, "meters", [energy])
    estimates = [m for m in parts if isinstance(m, EstimateMeter)]
    if estimates and pid is None:
        energy.close()
        raise ValueError(
            f"no energy sensor here, and the estimate of this process's CPU time would not "
            f"see the server's work: no process of this user listens on port {port}; give "
            "--server-pid PID of the server, or measure on a machine with NVML or RAPL")
    for m in estimates:
        m.basis.update(attribution="server-process", server_pid=pid, cpu_model_formula=(
            f"server process {pid} CPU time x TDP share: P = TDP * cpu_s / (wall_s * n_cpus),"
            " cpu_s of that process and its children (psutil); other processes not billed"))
    return energy, [covers(m, pid) for m in parts]


def covers(meter: Any, pid: int | None) -> str:
    """What one meter's joules include, for a server measured from outside."""
    devices = ", ".join(meter.devices())
    if meter.method.startswith("nvml"):
        return f"{devices}: whole GPUs; every process on them counts, not only the server"
    if meter.method == "rapl":
        return (f"{devices}: the whole CPU package and DRAM; every process on this machine "
                "counts, this client's request threads included")
    if meter.method == "estimate":
        return (f"{devices}: an ESTIMATE of server process {pid} (and its children): its CPU "
                "time x TDP share, plus the machine's RAM model; its GPU work, if any, and "
                "other processes are not seen")
    return f"{devices}: {meter.method}, as that meter defines it"


def _target(source: str, tracking_uri: str | None, log: bool) -> tuple[Any, str | None, str]:
    """(the source's record, its LoggedModel or ``None``, the store's URI), checked before
    anything is measured."""
    from depth.tracking.sources import find_logged_model, read_provenance
    from depth.tracking.store import default_tracking_uri, unreachable

    record = read_provenance(source, tracking_uri=tracking_uri)
    uri = tracking_uri or default_tracking_uri()
    model_id = None
    if log and source.startswith(MLFLOW_PREFIXES):
        from depth.tracking.sources import logged_model_id
        from depth.tracking.store import store_client

        model_id = logged_model_id(store_client(uri), source)
    elif log and record.record_sha256 and unreachable(uri) is None:
        model_id = find_logged_model(uri, record.record_sha256)
    return record, model_id, uri


def evaluate_endpoint(endpoint: str, model_name: str, config: EndpointConfig,
                      meter: Any = "auto", source: str | None = None,
                      server_pid: int | None = None, tracking_uri: str | None = None,
                      log: bool = True, progress: Callable[[str], None] | None = None,
                      warn: Warn = python_warning,
                      on_start: Callable[[dict[str, Any]], None] | None = None
                      ) -> dict[str, Any]:
    """Measures the server at `endpoint` serving `model_name`; returns one JSON-ready
    object, attached to `source` (a checkpoint, ``runs:/``, ``models:/``, ``m-``) when
    given: written beside a checkpoint, logged on its LoggedModel.

    `warn` gets each warning line: that a served model cannot be checked against the
    source's record (said before measuring), a previous eval the result replaces, a sweep
    stopped part-way. `on_start` gets the heading's facts (method, what the meter covers)
    once the meter is open, before the progress lines.

    Raises:
        ValueError: One line: not a server here, no way to meter it, a source without a
            record, or a server that refuses or sends no ``usage``.
    """
    from depth.record.uncertainty import is_measured, of_method

    _, port = local_server(endpoint)
    record, model_id, uri = (_target(source, tracking_uri, log) if source
                             else (None, None, None))
    tie = record is not None and tie_warning(Target(source, record.to_dict(), None, None),
                                             None, None, "a served model")
    if tie:
        warn(tie)
    pid = server_pid if server_pid is not None else listening_pid(port)
    energy, covered = endpoint_meter(meter, pid, port)
    try:
        if on_start is not None:
            on_start({"model_name": model_name, "endpoint": endpoint, "method": energy.method,
                      "measured": is_measured(energy.method), "meter_covers": covered,
                      "uncertainty": of_method(energy.method)})
        result = measure_endpoint(Client(endpoint, model_name, config.request_timeout_s),
                                  energy.read, config, progress)
        result["energy_basis"] = energy_basis(energy)
        method = energy.method
    finally:
        energy.close()
    result.update(kind="endpoint", endpoint=endpoint, model_name=model_name, server_pid=pid,
                  method=method, device=f"endpoint {endpoint}", dtype="as served",
                  meter_covers=covered, measured=is_measured(method),
                  uncertainty=of_method(method),
                  physics={"wh_per_million_tokens": wh_per_million_tokens(
                      result["tokens_per_wh"]), "held_out_loss_nats": None,
                      "loss": "not measured (a served endpoint: no held-out data)"},
                  measured_at=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                  warnings=[tie] if tie else [],
                  source=source, record_sha256=None, train_joules=None, depth_joules=None,
                  parameters=None, break_even_tokens=None, logged_model=None)
    for part in ((result["uncertainty"] or {}).get("per_method") or {}).values():
        if isinstance(part, dict) and "why" in part:  # the estimate bills the server here
            part["why"] = part["why"].replace("this process's", "the server process's")
    if record is not None:
        result.update(record_sha256=record.record_sha256, train_joules=record.train_joules,
                      depth_joules=record.depth_joules, parameters=record.parameters,
                      break_even_tokens=record.depth_joules / result["joules_per_token"])
    if result.get("stopped"):  # the levels measured are kept, and attached
        stopped = (f"warning: the sweep stopped part-way ({result['stopped']}); the "
                   f"{len(result['batches'])} levels measured before it are kept")
        result["warnings"].append(stopped)
        warn(stopped)
    if source and not source.startswith(MLFLOW_PREFIXES):
        write_eval(result, source, warn)  # where `depth amortize` looks
    elif model_id and uri and (replaced := previous_eval(source or "", model_id, uri)):
        result["warnings"].append(replaced)
        warn(replaced)
    if model_id and uri:
        log_inference_metrics(uri, model_id, result,
                              None if record is None else record.to_dict())
        from depth.tracking.store import store_client

        store_client(uri).set_logged_model_tags(model_id, {
            "depth.inference_endpoint": endpoint, "depth.inference_model_name": model_name,
            "depth.inference_best_concurrency": str(result["best_concurrency"])})
        result["logged_model"] = model_id
    return result
