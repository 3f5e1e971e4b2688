"""A team's MLflow: the basic-auth app on PostgreSQL, both started here on 127.0.0.1
(tests/support/postgres.py). Credentials from the environment (MLflow's way) and in the
URI both write (the callback's own run, an ``MLFlowLogger``'s run, the writer process,
checkpoint files) and read (provenance, eval, report); a wrong password is one redacted
line while training goes on into the spool, which `depth sync` replays; no password lands
in a file, tag, message, checkpoint or the database. Three concurrent fits through a server
killed and restarted store every point and LoggedModel exactly once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from mlflow import MlflowClient
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import MLFlowLogger

from depth import DepthCallback
from depth.cli import main
from depth.tracking.publish import register_model
from tests.doubles.meters import ClockMeter
from tests.support.outsider_gpt import LitNanoGPT, TokenWindows
from tests.support.postgres import (ADMIN, ADMIN_PASSWORD, ALICE, ALICE_PASSWORD, BOB,
                                    BOB_PASSWORD, TEAM_EXPERIMENT, grant)

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
# the load test (its timed version, 8 fits, is scripts/bench_tracking_load.py)
FITS, STEPS, EVERY = 3, 40, 10
WRONG = "wrong-pw-0c4d-SECRET"
SECRETS = (ALICE_PASSWORD, BOB_PASSWORD, WRONG, ADMIN_PASSWORD)
CLASS = "tests.support.outsider_gpt:LitNanoGPT"
FAST_EVAL = ["--batch-sizes", "1", "--prompt-tokens", "4", "--new-tokens", "4", "--repeats",
             "1", "--min-window-s", "0", "--idle-s", "0", "--meter", "estimate"]


@contextmanager
def environment(**values: str | None) -> Iterator[None]:
    """Sets (or, for ``None``, unsets) environment variables for a block (module-scoped
    fixtures cannot use monkeypatch)."""
    before = {k: os.environ.get(k) for k in values}
    for key, value in values.items():
        os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
    try:
        yield
    finally:
        for key, value in before.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def alice_env(password: str = ALICE_PASSWORD) -> dict[str, str]:
    return {"MLFLOW_TRACKING_USERNAME": ALICE, "MLFLOW_TRACKING_PASSWORD": password}


def fit(root: Path, logger: object = False, steps: int = 4, **options: object) -> DepthCallback:
    """Trains the user's nanoGPT with DepthCallback (a checkpoint every 2 steps; depth's
    MLflow writer in its own process), warnings recorded in ``callback.warned``."""
    text = Path(json.__file__).read_bytes()[:6000]
    callback = DepthCallback(ClockMeter({"gpu:0": 40.0}), mlflow_writer="process", **options)
    trainer = pl.Trainer(
        max_steps=steps, logger=logger, default_root_dir=root, accelerator="cpu", devices=1,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        callbacks=[callback, ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=2,
                                             save_top_k=-1)])
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        trainer.fit(LitNanoGPT(block_size=16, n_layer=1, n_head=2, n_embd=32),
                    torch.utils.data.DataLoader(TokenWindows(text, 16), batch_size=4))
        if logger is False:  # the own run's writer may learn of a refusal after fit returns
            callback.wait_for_tracking()
    callback.warned = [str(w.message) for w in warned if str(w.message).startswith("depth:")]
    return callback


def files_holding(secrets: tuple[str, ...], *roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob("*") if p.is_file()
            and any(s.encode() in p.read_bytes() for s in secrets)]


def _points(server, run_id: str) -> list[int]:
    admin = MlflowClient(server.as_user(ADMIN, ADMIN_PASSWORD))
    return sorted(m.step for m in admin.get_metric_history(run_id, "energy/joules"))


def _sync_if_spooled(root: Path) -> None:
    """On a busy machine a request can outlast the writer's 5 s timeout: what it could not
    store is spooled (by design: nothing waits on the server). Replay it, as a user would,
    with the same credentials."""
    if (root / "depth-spool").exists():
        assert main(["sync", str(root / "depth-spool")]) == 0


@pytest.fixture(scope="module")
def team(team_server, tmp_path_factory):
    """Alice trains twice: with env credentials and an MLFlowLogger into ``team``, and
    with credentials in MLFLOW_TRACKING_URI and the callback's own run into ``team-b``
    (created by her); both latest checkpoints are registered as versions 1 and 2 of
    ``team-gpt``. Returns (server, {"env"|"uri": (root, run id)}, {"env"|"uri": the
    steps stored directly, before any sync})."""
    server = team_server
    roots = {kind: tmp_path_factory.mktemp(f"alice-{kind}") for kind in ("env", "uri")}
    with environment(**alice_env()):
        logger = MLFlowLogger(experiment_name=TEAM_EXPERIMENT, tracking_uri=server.uri,
                              run_name="alice-env")
        fit(roots["env"], logger, log_checkpoints=True)
        runs = {"env": (roots["env"], logger.run_id)}
        direct = {"env": _points(server, logger.run_id)}
        _sync_if_spooled(roots["env"])  # what a busy server answered too late for
    with environment(MLFLOW_TRACKING_URI=server.as_user(ALICE, ALICE_PASSWORD)):
        callback = fit(roots["uri"], experiment_name="team-b", log_checkpoints=True)
        assert callback.wait_for_tracking()  # the own run's writer finishes after fit
        runs["uri"] = (roots["uri"], callback.sinks.own_run[1])
        direct["uri"] = _points(server, runs["uri"][1])
        _sync_if_spooled(roots["uri"])
    alice = MlflowClient(server.as_user(ALICE, ALICE_PASSWORD))
    for _, run_id in runs.values():
        experiment = alice.get_run(run_id).info.experiment_id
        latest = max((m for m in alice.search_logged_models([experiment])
                      if m.source_run_id == run_id), key=lambda m: int(m.tags["depth.step"]))
        register_model(latest.model_id, "team-gpt", client=alice)
    return server, runs, direct


def test_both_credential_forms_store_every_point_and_checkpoint_once(team):
    server, runs, direct = team
    admin = MlflowClient(server.as_user(ADMIN, ADMIN_PASSWORD))
    for kind, (_, run_id) in runs.items():
        run = admin.get_run(run_id)
        assert run.info.status == "FINISHED", kind
        assert direct[kind][:1] == [1], kind  # stored directly, with these credentials
        joules = admin.get_metric_history(run_id, "energy/joules")
        assert sorted(m.step for m in joules) == [1, 2, 3, 4], kind  # each once, sync or not
        models = [m for m in admin.search_logged_models([run.info.experiment_id])
                  if m.source_run_id == run_id]
        assert sorted(int(m.tags["depth.step"]) for m in models) == [2, 4], kind
        assert all(m.tags.get("depth.checkpoint_file") for m in models), kind  # uploaded


def test_no_password_lands_in_a_file_tag_checkpoint_or_the_database(team):
    server, runs, _ = team
    admin = MlflowClient(server.as_user(ADMIN, ADMIN_PASSWORD))
    for root, run_id in runs.values():
        run = admin.get_run(run_id)
        models = admin.search_logged_models([run.info.experiment_id])
        stored = json.dumps([run.data.params, run.data.tags, [m.tags for m in models]])
        assert not any(s in stored for s in SECRETS)
        for path in (root / "ckpt").glob("*.ckpt"):
            assert not any(s in json.dumps(torch.load(path, weights_only=True)["depth"])
                           for s in SECRETS)
    # training folders (checkpoints, sidecars), the server's artifacts (uploaded
    # checkpoints, records), and a dump of the tracking database
    assert files_holding(SECRETS, *(root for root, _ in runs.values()), server.root) == []
    assert not any(s in server.dump() for s in SECRETS)


def test_reads_with_env_or_uri_credentials(team, capsys, tmp_path, monkeypatch):
    server, runs, _ = team
    with_uri = server.as_user(ALICE, ALICE_PASSWORD)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ALICE)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ALICE_PASSWORD)
    assert main(["provenance", f"runs:/{runs['env'][1]}", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["optimizer_steps"] == 4
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name)
    assert main(["provenance", "models:/team-gpt/2", "--json", "--tracking-uri", with_uri]) == 0
    assert json.loads(capsys.readouterr().out)["optimizer_steps"] == 4
    # eval: a copy of the weights without the record, attached to the registered model
    root, run_id = runs["uri"]
    bare = tmp_path / "exported.ckpt"
    checkpoint = torch.load(root / "ckpt" / "epoch=0-step=4.ckpt", weights_only=True)
    checkpoint.pop("depth")
    torch.save(checkpoint, bare)
    status = main(["eval", str(bare), "--model-class", CLASS, "--source", "models:/team-gpt/2",
                   "--tracking-uri", with_uri, *FAST_EVAL])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert "logged on LoggedModel m-" in out
    assert not any(s in out + err for s in SECRETS)


def test_wrong_credentials_are_one_redacted_line_and_sync_replays_the_spool(team_server,
                                                                          tmp_path, capsys):
    server = team_server
    admin = MlflowClient(server.as_user(ADMIN, ADMIN_PASSWORD))
    bob = {"MLFLOW_TRACKING_URI": server.uri, "MLFLOW_TRACKING_USERNAME": BOB,
           "MLFLOW_TRACKING_PASSWORD": BOB_PASSWORD}  # right password, READ only
    for kind, env, says in (
            ("env", {"MLFLOW_TRACKING_URI": server.uri, **alice_env(WRONG)}, "401"),
            ("uri", {"MLFLOW_TRACKING_URI": server.as_user(ALICE, WRONG)}, "401"),
            ("read-only", bob, "403")):
        root = tmp_path / kind
        before = {r.info.run_id for r in admin.search_runs([server.team_id])}
        started = time.monotonic()
        with environment(**env):  # a refusal is not retried: a long budget is not spent
            callback = fit(root, experiment_name=TEAM_EXPERIMENT, tracking_retry_s=600)
        # retried, the refusal would hold wait_for_tracking to its 120 s limit
        assert time.monotonic() - started < 90, kind
        # one line, redacted, saying what and where: from the probe ("HTTP 401: it refuses
        # the credentials") or, when a fresh server answers it too slowly, from opening the
        # run ("error code 401")
        (line,) = callback.warned
        assert "\n" not in line and says in line and "depth sync" in line, line
        assert not any(s in line for s in SECRETS)
        assert files_holding(SECRETS, root) == []
        assert sorted(p.name for p in (root / "ckpt").glob("*.ckpt")) == \
            ["epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt"]  # training went on
        if kind == "read-only":  # bob's own sync is refused: told what would help
            with environment(**bob):
                status = main(["sync", str(root / "depth-spool")])
            out, err = capsys.readouterr()
            assert status == 1 and "(EDIT)" in out + err, out + err
        right = ({"MLFLOW_TRACKING_URI": server.as_user(ALICE, ALICE_PASSWORD)}
                 if kind == "uri" else {"MLFLOW_TRACKING_URI": server.uri, **alice_env()})
        with environment(**right):
            status = main(["sync", str(root / "depth-spool")])
        out, err = capsys.readouterr()
        assert status == 0, err
        assert not any(s in out + err for s in SECRETS)
        (run,) = [r for r in admin.search_runs([server.team_id])
                  if r.info.run_id not in before]
        joules = admin.get_metric_history(run.info.run_id, "energy/joules")
        assert sorted(m.step for m in joules) == [1, 2, 3, 4]  # each once
        models = admin.search_logged_models([server.team_id])
        assert sorted(int(m.tags["depth.step"]) for m in models
                      if m.source_run_id == run.info.run_id) == [2, 4]


def test_a_team_report_over_experiments_and_a_registered_models_versions(team, capsys,
                                                                        tmp_path):
    server, runs, _ = team
    alice = MlflowClient(server.as_user(ALICE, ALICE_PASSWORD))
    team_b = alice.get_experiment_by_name("team-b").experiment_id
    as_bob = server.as_user(BOB, BOB_PASSWORD)
    both = ["report", "--experiment", TEAM_EXPERIMENT, "--experiment", "team-b", "--json"]
    # bob may read `team` only: one line naming what he lacks, nothing written
    status = main([*both, "--no-log", "--out", str(tmp_path / "bob"), "--tracking-uri", as_bob])
    out, err = capsys.readouterr()
    assert status == 2 and len(err.splitlines()) == 1, err
    assert "experiment 'team-b'" in err and "'team'," not in err and "Traceback" not in err
    assert not any(s in out + err for s in SECRETS)
    grant(server, BOB, "experiment", team_b, "READ")
    # without --no-log the report run needs EDIT: one line that names the way out
    status = main([*both, "--out", str(tmp_path / "bob-log"), "--tracking-uri", as_bob])
    out, err = capsys.readouterr()
    assert status == 2 and len(err.splitlines()) == 1 and "--no-log" in err, err
    status = main([*both, "--no-log", "--out", str(tmp_path / "bob"), "--tracking-uri", as_bob])
    out, err = capsys.readouterr()
    assert status == 0, err
    rows = json.loads(out)
    assert {r["run"] for r in rows} >= {run_id for _, run_id in runs.values()}
    # alice, credentials from the environment: every version of team-gpt, logged
    with environment(MLFLOW_TRACKING_URI=server.uri, **alice_env()):
        status = main(["report", "--registered-model", "team-gpt", "--out",
                       str(tmp_path / "alice")])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert "registered model 'team-gpt'" in out
    assert "models:/team-gpt/1" in out and "models:/team-gpt/2" in out
    assert (tmp_path / "alice" / "models.csv").exists()
    (logged,) = [r for r in alice.search_runs([team_b]) if r.info.run_name == "depth-report"]
    assert not any(s in out + err for s in SECRETS)


def test_concurrent_fits_through_a_restart_store_everything_exactly_once(team_server,
                                                                         tmp_path):
    server = team_server
    experiment = f"load-{uuid.uuid4().hex[:6]}"  # new: the fits race to create it
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO),
           "MLFLOW_TRACKING_URI": server.as_user(ALICE, ALICE_PASSWORD)}
    dirs = [tmp_path / f"fit{i}" for i in range(FITS)]
    procs = []
    for d in dirs:
        d.mkdir()
        procs.append(subprocess.Popen(
            [sys.executable, str(REPO / "tests/support/team_fit.py"), "--dir", str(d),
             "--steps", str(STEPS), "--sleep", "0.1", "--every-n-steps", str(EVERY),
             "--experiment", experiment, "--go", str(go)],
            env=env, stdout=subprocess.DEVNULL, stderr=open(d / "stderr.log", "w")))
    try:
        deadline = time.monotonic() + 300
        while not all((d / "ready").exists() for d in dirs):  # imports done: start together
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
            time.sleep(0.1)
        go.touch()
        while not all((d / "ckpt").is_dir() and any((d / "ckpt").glob("*.ckpt"))
                      for d in dirs):  # each has stored a checkpoint: kill the server
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
            time.sleep(0.05)
        server.stop()
        for d, p in zip(dirs, procs):
            assert p.wait(timeout=300) == 0, (d / "stderr.log").read_text()[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        if server.proc is None:
            server.start()
    assert any((d / "depth-spool").exists() for d in dirs)  # the outage was hit
    for d in dirs:
        if (d / "depth-spool").exists():
            assert main(["sync", str(d / "depth-spool"),
                         "--tracking-uri", server.as_user(ALICE, ALICE_PASSWORD)]) == 0
    admin = MlflowClient(server.as_user(ADMIN, ADMIN_PASSWORD))
    experiment_id = admin.get_experiment_by_name(experiment).experiment_id
    runs = admin.search_runs([experiment_id])
    assert len(runs) == FITS
    models = admin.search_logged_models([experiment_id])
    for run in runs:
        steps = [m.step for m in admin.get_metric_history(run.info.run_id, "energy/joules")]
        assert sorted(steps) == list(range(1, STEPS + 1))  # every point, once
        mine = [int(m.tags["depth.step"]) for m in models
                if m.source_run_id == run.info.run_id]
        assert sorted(mine) == list(range(EVERY, STEPS + 1, EVERY))  # every model, once
        assert run.info.status == "FINISHED"
