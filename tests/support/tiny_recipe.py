"""The smallest `tiny-cpu` recipe trained for real, on its own SQLite store: a checkpoint
with a record and a LoggedModel, for tests of what reads them (eval, amortize)."""

from __future__ import annotations

from pathlib import Path


def train_tiny_recipe(root: Path, experiment: str) -> tuple[str, str]:
    """(tracking URI, checkpoint path) of a 2-step fit under `root`, on `root`'s own store
    (not the session's global one, tests/conftest.py)."""
    from depth.gpt.recipe import load_recipe
    from depth.gpt.train import train

    uri = f"sqlite:///{root}/mlflow.db"
    recipe = load_recipe("tiny-cpu", [
        "--model.n_layer", "1", "--model.n_head", "2", "--model.n_embd", "16",
        "--model.block_size", "16", "--train.batch_size", "2", "--train.max_steps", "2",
        "--train.val_batches", "1", "--train.val_every_n_steps", "2",
        "--train.progress_bar", "false", "--data.stdlib_glob", "json/*.py",
        "--data.val_fraction", "0.2", "--data.cache_dir", str(root / "hf"),
        "--tracking.tracking_uri", uri, "--tracking.experiment_name", experiment,
        "--train.out_dir", str(root / "out")])
    return uri, train(recipe).checkpoint
