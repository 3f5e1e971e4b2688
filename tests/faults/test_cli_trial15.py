"""What a new user's trial of issue 15 found in the commands' errors: internal option keys
in "missing" messages, a reading command that created an empty store behind a typo, and
`depth register` advising a --trust it did not have."""

from __future__ import annotations

import pytest

from depth.cli import main


@pytest.mark.parametrize("argv, says", [
    (["attribute", "--to", "x.ckpt"], "depth attribute: missing --experiment"),
    (["register", "x.ckpt"], "depth register: missing NAME"),
    (["register"], "depth register: missing SOURCE, NAME"),
])
def test_a_missing_argument_is_named_as_the_user_types_it(capsys, argv, says):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert err.startswith(says) and err.count("\n") == 1
    assert "." not in err.split("(see")[0].split("missing")[1]  # no "register.name"


@pytest.mark.parametrize("argv", [
    ["report", "--experiment", "x"],
    ["register", "m-0123", "x"],
    ["attribute", "--experiment", "x", "--to", "m-0123"],
    ["provenance", "m-0123"],
])
def test_reading_a_store_that_does_not_exist_creates_none(tmp_path, capsys, argv):
    store = tmp_path / "typo" / "mlflow.db"
    store.parent.mkdir()
    status = main([*argv, "--tracking-uri", f"sqlite:///{store}"])
    err = capsys.readouterr().err
    assert status == 2
    assert f"no MLflow store at {store}" in err and err.count("\n") == 1
    assert not store.exists()


def test_register_takes_the_trust_it_advises(tmp_path, capsys):
    store = tmp_path / "mlflow.db"
    store.touch()  # a store that exists: the checkpoint is what is missing
    status = main(["register", str(tmp_path / "missing.ckpt"), "x", "--trust",
                   "--tracking-uri", f"sqlite:///{store}"])
    err = capsys.readouterr().err
    assert status == 2
    assert "unrecognized" not in err and "missing.ckpt" in err
