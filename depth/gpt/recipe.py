"""Training recipes: typed dataclass options, loaded from YAML with jsonargparse.

A recipe is one YAML file (``recipes/*.yaml``) whose keys are the fields of `Recipe`;
``depth train RECIPE --train.max_steps 50`` overrides any of them on the command line.
Every field is checked when the recipe is loaded: a bad value fails with one line naming
the field and what it accepts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from depth.gpt.data import DataConfig
from depth.gpt.model import GPTConfig
from depth.gpt.module import OptimConfig

RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"


@dataclass
class TrainConfig:
    """How the Trainer runs.

    Attributes:
        max_steps: Optimizer steps to train.
        batch_size: Sequences per batch.
        accumulate_grad_batches: Batches per optimizer step.
        precision: Lightning precision: ``32-true``, ``bf16-mixed``, ``16-mixed``, ``bf16-true``.
        accelerator: ``auto`` (a GPU when there is one), ``cpu`` or ``gpu``.
        devices: Devices (processes) to train on.
        gradient_clip_val: Clip gradients to this norm (``null``: no clipping).
        val_every_n_steps: Validate (and checkpoint) every this many training batches.
        val_batches: Validation batches each time.
        log_every_n_steps: How often Lightning logs the loss.
        seed: Seed for weights and data order.
        out_dir: Where checkpoints and the crash sidecar go (checkpoints/ under it).
        torch_threads: CPU threads for torch (``null``: torch's default).
        progress_bar: Show the progress bar with live joules, watts and tokens/Wh.
    """

    max_steps: int = 300
    batch_size: int = 16
    accumulate_grad_batches: int = 1
    precision: Literal["32-true", "bf16-mixed", "16-mixed", "bf16-true"] = "32-true"
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    devices: int = 1
    gradient_clip_val: float | None = 1.0
    val_every_n_steps: int = 100
    val_batches: int = 10
    log_every_n_steps: int = 10
    seed: int = 1337
    out_dir: str = "runs/tiny-cpu"
    torch_threads: int | None = None
    progress_bar: bool = True

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "accumulate_grad_batches", "devices",
                     "val_every_n_steps", "val_batches", "log_every_n_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1; got {getattr(self, name)}")


@dataclass
class DepthOptions:
    """What `DepthCallback` measures and records.

    Attributes:
        meter: ``auto`` or a meter name (``nvml-counter``, ``nvml-power``, ``rapl``,
            ``estimate``).
        sync: CUDA synchronization before reads: ``none``, ``log`` or ``step``.
        log_every_n_steps: One energy point every this many optimizer steps.
        log_checkpoints: Upload checkpoint files to their MLflow LoggedModels.
        country_iso_code: Where the energy was drawn (ISO 3166 alpha-3), for carbon.
        region: A region within that country that CodeCarbon knows.
        pue: The facility's power usage effectiveness, when known.
    """

    meter: Literal["auto", "nvml-counter", "nvml-power", "rapl", "estimate"] = "auto"
    sync: Literal["none", "log", "step"] = "none"
    log_every_n_steps: int = 1
    log_checkpoints: bool = False
    country_iso_code: str | None = None
    region: str | None = None
    pue: float | None = None


@dataclass
class TrackingConfig:
    """Where MLflow records go.

    Attributes:
        enabled: Record to MLflow at all (off: checkpoints still carry their records; for
            machines without mlflow installed).
        tracking_uri: MLflow tracking URI (``null``: ``MLFLOW_TRACKING_URI``, else
            ``sqlite:///mlruns/mlflow.db``).
        experiment_name: The MLflow experiment.
        run_name: The run's name (``null``: MLflow picks one).
    """

    enabled: bool = True
    tracking_uri: str | None = None
    experiment_name: str = "depth"
    run_name: str | None = None


@dataclass
class Recipe:
    """A GPT training recipe.

    Attributes:
        name: The recipe's name (the MLflow run is named after it by default).
        model: The GPT's shape.
        data: The corpus and tokenizer.
        optim: The optimizer and learning-rate schedule.
        train: How the Trainer runs.
        depth: What is measured and recorded.
        tracking: Where MLflow records go.
        init_from: A checkpoint to fine-tune: its weights are loaded and its energy record
            becomes this model's parent (lineage).
    """

    name: str = "custom"
    model: GPTConfig = field(default_factory=GPTConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    depth: DepthOptions = field(default_factory=DepthOptions)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    init_from: str | None = None


def recipe_path(name_or_path: str) -> Path:
    """A recipe file: a path as given, else ``recipes/<name>.yaml`` here or in the
    repository depth was installed from."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    for folder in (Path("recipes"), RECIPES_DIR):
        for candidate in (folder / name_or_path, folder / f"{name_or_path}.yaml"):
            if candidate.is_file():
                return candidate
    known = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")) if RECIPES_DIR.is_dir() else []
    raise ValueError(f"recipe {name_or_path!r} not found: give a YAML file"
                     + (f" or one of {', '.join(known)}" if known else ""))


def declare(parser: Any) -> None:
    """Declares every recipe field (``--model.n_layer`` ...) and ``--config`` on `parser`."""
    from jsonargparse import ActionConfigFile

    parser.add_argument("--config", action=ActionConfigFile,
                        help="The recipe: a YAML file (the first argument of depth train).")
    parser.add_class_arguments(Recipe, None, fail_untyped=True, sub_configs=True)


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """A recipe from its YAML file and command-line style overrides (``--train.max_steps
    5``); raises ValueError with one line naming a bad field."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    declare(parser)
    try:
        cfg = parser.parse_args(["--config", str(recipe_path(str(path))), *(overrides or [])])
        return to_recipe(parser, cfg)
    except ValueError:
        raise
    except Exception as err:
        raise ValueError(" ".join(str(err).split())) from None


def to_recipe(parser: Any, cfg: Any) -> Recipe:
    """The `Recipe` of a parsed namespace (dataclass fields instantiated)."""
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    init = instantiate(cfg)
    fields = {k: init[k] for k in Recipe.__dataclass_fields__ if k in init}
    recipe = Recipe(**fields)
    if recipe.data.tokenizer == "bytes" and recipe.model.vocab_size < 256:
        raise ValueError(f"model.vocab_size must be >= 256 for tokenizer 'bytes'; got "
                         f"{recipe.model.vocab_size}")
    return recipe
