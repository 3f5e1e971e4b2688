"""`depth train` and `depth run` (the main job): a recipe trained with depth measuring."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentParser, Namespace

from depth.cli import checks
from depth.cli.common import UsageError, one_line, progress
from depth.serving.physics import GPT3_J_PER_PARAMETER

# ----------------------------------------------------------------------------- train, run

def declare_train(p: ArgumentParser) -> None:
    from depth.gpt.recipe import declare

    declare(p)


def _recipe_of(args: Namespace) -> Any:
    from depth.gpt.recipe import declare, to_recipe

    parser = ArgumentParser(exit_on_error=False)
    declare(parser)
    try:
        recipe = to_recipe(parser, args)
    except (TypeError, ValueError) as err:
        raise UsageError(one_line(err)) from None
    checks.meter("depth.meter", recipe.depth.meter)  # now, not when the fit starts
    if recipe.tracking.enabled:
        checks.tracking_uri("tracking.tracking_uri", recipe.tracking.tracking_uri)
    return recipe


def _train(recipe: Any) -> Any:
    from depth.gpt.train import train

    try:
        return train(recipe)
    except ValueError as err:  # data or recipe problems found once the data is read
        raise UsageError(one_line(err)) from None


def run_train(args: Namespace) -> int:
    """`depth train RECIPE [--field value ...]`: train a recipe with depth measuring."""
    result = _train(_recipe_of(args))
    _print_training(result)
    return 0


def _print_training(result: Any, extra: Sequence[tuple[str, str]] = ()) -> None:
    record = result.record
    joules = record["train_joules"]
    from depth.record.uncertainty import UNMEASURED, measurement_label
    tokens = record["segments"][-1].get("tokens") or 0
    fit_joules = record["segments"][-1]["joules"]
    rows = [
        ("checkpoint", result.checkpoint),
        ("training energy", "unmeasured (no valid reading: missing, not 0)"
         if record["method"] == UNMEASURED else f"{joules:,.1f} J = {joules / 3.6e6:.6f} kWh"),
        ("depth (with parents)", f"{record.get('depth_joules', joules):,.1f} J"),
        ("parameters", f"{result.parameters:,}"),
        ("joules per parameter", f"{joules / result.parameters:.3g} J/param (GPT-3: "
         f"~{GPT3_J_PER_PARAMETER:.1f}, Patterson et al. 2021)"),
        ("training tokens", f"{record.get('train_tokens') or 0:,}"),
        ("training tokens per Wh", f"{tokens / (fit_joules / 3600):,.0f}" if fit_joules else "-"),
        ("throughput", f"{result.tokens_per_s:,.0f} tokens/s over {result.wall_s:.1f} s"),
        ("validation loss",
         "-" if result.val_loss is None else f"{result.val_loss:.3f} nats/token"),
        ("method", f"{record['method']} "
                   f"({measurement_label(record['method'], record.get('measured'))})"),
        *extra,
    ]
    for name, value in rows:
        print(f"  {name:<24} {value}")


def _ui_command(uri: str | None) -> str:
    if uri is None:
        return "(no MLflow store: tracking was off)"
    from depth.tracking.store import redact

    if uri.startswith(("http://", "https://")):
        return f"open {redact(uri)}"
    return f"mlflow ui --backend-store-uri {redact(uri)}"


def declare_run(p: ArgumentParser) -> None:
    from depth.gpt.recipe import declare

    declare(p)


def run_run(args: Namespace) -> int:
    """`depth run`: the main job: train the default recipe, evaluate, summarize."""
    recipe = _recipe_of(args)
    print(f"depth run: training recipe {recipe.name!r} "
          f"({'GPU' if recipe.train.accelerator == 'gpu' else recipe.train.accelerator}, "
          f"{recipe.train.max_steps} steps)", file=sys.stderr)
    result = _train(recipe)
    print(f"depth run: measuring inference tokens/Wh of {result.checkpoint}", file=sys.stderr)
    evaluation = _evaluate_trained(recipe, result)
    joules_per_token = evaluation["joules_per_token"]
    from depth.serving.amortize import amortize

    served = 1e6
    spread = amortize(evaluation["depth_joules"], joules_per_token, served)
    print("\ndepth run: summary")
    _print_training(result, [
        ("inference tokens per Wh", f"{evaluation['tokens_per_wh']:,.0f} at batch "
         f"{evaluation['best_batch_size']} ({evaluation['dtype']}, {evaluation['device']}; "
         f"{evaluation['joules_per_token']:.3g} J/token)"),
        ("break-even served tokens", f"{spread.break_even_tokens:,.0f}: then serving has used "
         "as much energy as training"),
        ("amortized over 1M tokens", f"{spread.amortized_j_per_token:.3g} J/token "
         f"({spread.training_share:.0%} of it training)"),
        ("inference method", f"{evaluation['method']} ("
         f"{'measured' if evaluation['measured'] else 'ESTIMATED: no sensor'})")])
    print(f"\nMLflow UI: {_ui_command(result.tracking_uri)}   (run {result.run_id})")
    return 0


def _evaluate_trained(recipe: Any, result: Any) -> dict[str, Any]:
    """`depth eval` of the checkpoint `depth run` just trained, sized to its context."""
    import torch

    from depth.serving.evaluation import evaluate
    from depth.serving.inference import EvalConfig, sweep_sizes

    cuda = recipe.train.accelerator != "cpu" and torch.cuda.is_available()
    prompt = min(64, recipe.model.block_size // 2)
    config = EvalConfig(batch_sizes=sweep_sizes(None, 1024 if cuda else 64),
                        prompt_tokens=prompt,
                        new_tokens=min(64, recipe.model.block_size - prompt),
                        dtype="bf16" if cuda else "fp32")

    try:
        return evaluate(result.checkpoint, config, device="cuda" if cuda else "cpu",
                        tracking_uri=result.tracking_uri, log=result.tracking_uri is not None,
                        progress=progress)
    except (OSError, ValueError) as err:
        raise UsageError(one_line(err)) from None


def default_recipe() -> str:
    """``gpt2-small`` when a CUDA GPU is present, else ``tiny-cpu``."""
    import torch

    return "gpt2-small" if torch.cuda.is_available() else "tiny-cpu"


def with_recipe_file(argv: list[str]) -> list[str]:
    """``depth train RECIPE ...`` (and ``depth run [RECIPE] ...``): the recipe becomes
    ``--config FILE`` for jsonargparse, a name resolving to ``recipes/NAME.yaml``."""
    if not argv or argv[0] not in ("train", "run"):
        return argv
    from depth.gpt.recipe import recipe_path

    rest = argv[1:]
    for i, arg in enumerate(rest[:-1]):
        if arg == "--config":
            _readable_recipe(Path(rest[i + 1]))
    if rest and not rest[0].startswith("-"):
        name, rest = rest[0], rest[1:]
    elif argv[0] == "run" and "--config" not in rest and not {"-h", "--help"} & set(rest):
        name = default_recipe()
    else:
        return argv
    try:
        path = recipe_path(name)
    except ValueError as err:
        raise UsageError(str(err)) from None
    _readable_recipe(path)
    return [argv[0], "--config", str(path), *rest]


def _readable_recipe(path: Path) -> None:
    """A recipe file must be UTF-8 text (YAML's encoding): jsonargparse would fail on
    anything else with a traceback."""
    try:
        path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UsageError(f"recipe {path} is not UTF-8 text (byte {err.object[err.start]:#04x} "
                         f"at offset {err.start}); save it as UTF-8") from None
    except OSError as err:
        raise UsageError(f"recipe {path}: cannot read it ({err.strerror or err})") from None
