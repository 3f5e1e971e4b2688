"""Every recipe in recipes/ loads and matches the code; bad fields fail in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from depth.gpt.model import GPT
from depth.gpt.recipe import RECIPES_DIR, Recipe, load_recipe

RECIPES = sorted(RECIPES_DIR.glob("*.yaml"))


def test_the_three_recipes_are_there():
    assert {p.stem for p in RECIPES} >= {"tiny-cpu", "gpt2-small", "finetune-tiny"}


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_recipe_loads_against_the_code(path):
    recipe = load_recipe(path)  # unknown keys and wrong types are refused here
    assert isinstance(recipe, Recipe) and recipe.name == path.stem
    assert recipe.optim.decay_steps <= recipe.train.max_steps
    assert recipe.train.out_dir == f"runs/{path.stem}"


def test_recipe_sizes_are_what_their_comments_say():
    gpt2 = load_recipe(RECIPES_DIR / "gpt2-small.yaml")
    with torch.device("meta"):
        model = GPT(gpt2.model)
    assert 124e6 < model.num_params(non_embedding=False) < 125e6
    assert gpt2.train.precision == "bf16-mixed" and gpt2.train.accelerator == "gpu"
    tiny = load_recipe(RECIPES_DIR / "tiny-cpu.yaml")
    assert tiny.train.accelerator == "cpu" and tiny.data.source == "stdlib"
    finetune = load_recipe(RECIPES_DIR / "finetune-tiny.yaml")
    last = f"{tiny.train.out_dir}/checkpoints/step={tiny.train.max_steps}.ckpt"
    assert finetune.init_from == last
    assert finetune.model == tiny.model  # the parent's weights must fit


def test_overrides_apply_and_bad_ones_name_the_field():
    recipe = load_recipe("tiny-cpu", ["--train.max_steps", "7", "--model.n_layer", "2"])
    assert recipe.train.max_steps == 7 and recipe.model.n_layer == 2
    with pytest.raises(ValueError, match=r"train\.precision.*32-true"):
        load_recipe("tiny-cpu", ["--train.precision", "fp8"])
    with pytest.raises(ValueError, match="n_embd"):
        load_recipe("tiny-cpu", ["--model.n_embd", "130"])
    with pytest.raises(ValueError, match="not found"):
        load_recipe("no-such-recipe")


@pytest.mark.parametrize("argv, field", [
    (["train", "tiny-cpu", "--model.n_embd", "130"], "n_embd"),
    (["train", "tiny-cpu", "--train.precision", "fp8"], "train.precision"),
    (["train", "tiny-cpu", "--model.depth", "3"], "model.depth"),
    (["train", "missing-recipe"], "missing-recipe"),
])
def test_cli_refuses_bad_recipes_in_one_line(argv, field, capsys):
    from depth.cli import main

    try:
        status = main(argv)
    except SystemExit as exit_:
        status = exit_.code
    err = capsys.readouterr().err
    assert status == 2
    assert field in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_the_console_command_refuses_a_bad_field_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "depth.cli", "train", "tiny-cpu",
                           "--optim.lr", "-1"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and "optim.lr" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_recipes_readme_lists_every_recipe():
    text = (RECIPES_DIR / "README.md").read_text()
    assert all(f"`{p.name}`" in text for p in RECIPES)
    assert Path(RECIPES_DIR).name == "recipes"
