"""The ``depth`` command.

Each subcommand is a pair, in the module of its group: a function that declares its
options on a jsonargparse parser and a function that runs it and returns the exit status.
Bad input ends in one line on stderr naming the option and the fix, exit status 2, never a
traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from jsonargparse import ArgumentParser

from depth.cli.common import Command, OneLineParser, UsageError
from depth.cli.export import declare_export, run_export
from depth.cli.meters import declare_meters, run_meters
from depth.cli.records import (
    declare_card,
    declare_provenance,
    declare_verify,
    run_card,
    run_provenance,
    run_verify,
)
from depth.cli.registry import declare_register, run_register
from depth.cli.search import declare_attribute, run_attribute
from depth.cli.serving import (
    declare_amortize,
    declare_eval,
    declare_report,
    run_amortize,
    run_eval,
    run_report,
)
from depth.cli.sync import declare_sync, run_sync
from depth.cli.training import declare_run, declare_train, run_run, run_train, with_recipe_file

__all__ = ["COMMANDS", "UsageError", "build_parser", "main"]

COMMANDS: dict[str, Command] = {
    "meters": Command("List energy sources found and rejected, then read them.",
                      declare_meters, run_meters),
    "verify": Command("Check that a checkpoint's weights and energy record match.",
                      declare_verify, run_verify),
    "provenance": Command("Show the energy record of a checkpoint or MLflow model.",
                          declare_provenance, run_provenance),
    "card": Command("Write Hugging Face model-card metadata (co2_eq_emissions, energy).",
                    declare_card, run_card),
    "train": Command("Train a recipe (YAML) with energy measured at every optimizer step.",
                     declare_train, run_train),
    "run": Command("The main job: train the default recipe (tiny-cpu, or gpt2-small on a "
                   "GPU) and summarize its depth.", declare_run, run_run),
    "eval": Command("Measure a model's inference tokens per Wh over a batch-size sweep.",
                    declare_eval, run_eval),
    "amortize": Command("Spread a model's training energy over served tokens; break-even.",
                        declare_amortize, run_amortize),
    "report": Command("Compare every model of an experiment: one table, three plots.",
                      declare_report, run_report),
    "attribute": Command("Keep the energy of an experiment's whole search (every run) on "
                         "the model it arrived at, as search_joules.", declare_attribute,
                         run_attribute),
    "register": Command("Register a model (checkpoint, runs:/, models:/, m-) as a version "
                        "linked to its LoggedModel, with its depth tags and summary.",
                        declare_register, run_register),
    "export": Command("Write a depth GPT checkpoint as a transformers GPT-2 folder "
                      "(--format hf) with its model card and record.",
                      declare_export, run_export),
    "sync": Command("Replay energy metrics and records spooled while a tracking server was "
                    "down.", declare_sync, run_sync),
}


def build_parser(command: str | None = None) -> ArgumentParser:
    """The parser; with `command`, only that subcommand's options are declared (declaring
    the recipe options imports torch and Lightning, seconds that `depth meters` need not
    wait for)."""
    parser = OneLineParser(prog="depth", description="Measure the thermodynamic depth of trained "
                     "models: training joules against inference tokens per watt-hour.")
    subcommands = parser.add_subcommands(dest="command", required=True)
    for name, spec in COMMANDS.items():
        sub = OneLineParser(prog=f"depth {name}", description=spec.help)
        if command is None or name == command:
            spec.declare(sub)
        subcommands.add_subcommand(name, sub, help=spec.help)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``depth`` console script."""
    try:
        status = _run(list(sys.argv[1:] if argv is None else argv))
        sys.stdout.flush()  # a closed pipe is found here, not at exit
        return status
    except BrokenPipeError:
        # `depth ... | head`: the reader left; exit quietly, as Python's docs advise
        # (stdout pointed at devnull so that the interpreter's own flush is silent too).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def _run(argv: list[str]) -> int:
    parser = build_parser(argv[0] if argv and argv[0] in COMMANDS else "")
    try:
        argv = with_recipe_file(argv)
    except UsageError as err:
        print(f"depth {argv[0]}: {err}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command].run(args[args.command])
    except UsageError as err:
        print(f"depth {args.command}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"depth {args.command}: interrupted", file=sys.stderr)
        return 130
