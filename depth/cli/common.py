"""What every subcommand shares: one-line errors, the Command record, input checks."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jsonargparse import ArgumentParser, Namespace


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


class OneLineParser(ArgumentParser):
    """jsonargparse parser whose errors are one line: what is wrong, and where help is."""

    def error(self, message: str, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        prog = self.prog.replace(" [options]", "")
        text = one_line(message)
        if (named := self._required_names(text)) is not None:  # jsonargparse's "cmd.dest"
            prog, text = named
        print(f"{prog}: {text} (see {prog} --help)", file=sys.stderr)
        raise SystemExit(2)

    def _required_names(self, text: str) -> tuple[str, str] | None:
        """("depth CMD", "missing: --option, NAME") for jsonargparse's "the following
        arguments are required: CMD.dest, ..." (its names are internal keys)."""
        head = "the following arguments are required: "
        subcommands = getattr(self, "_subcommands_action", None)
        if not text.startswith(head) or subcommands is None:
            return None
        names, command = [], None
        for key in text.removeprefix(head).split(", "):
            command, _, dest = key.partition(".")
            parser = subcommands._name_parser_map.get(command)
            action = next((a for a in getattr(parser, "_actions", []) if a.dest == dest), None)
            if action is None:
                return None
            names.append(action.option_strings[-1] if action.option_strings else dest.upper())
        return f"depth {command}", f"missing {', '.join(names)}"


@dataclass(frozen=True)
class Command:
    """A subcommand: its help line, option declarations, and runner."""

    help: str
    declare: Callable[[ArgumentParser], None]
    run: Callable[[Namespace], int]


def positive(name: str, value: float) -> float:
    if not (value > 0 and math.isfinite(value)):
        raise UsageError(f"--{name} must be greater than 0 and finite (got {value:g})")
    return value


def one_line(message: object) -> str:
    """A message (an exception, or text) on one line, for stderr."""
    return " ".join(str(message).split())


def progress(line: str) -> None:
    """One line of progress on stderr, indented under the command's own lines."""
    print(f"  {line}", file=sys.stderr)


def warn_line(command: str) -> Callable[[str], None]:
    """A warning callback printing ``depth COMMAND: LINE`` on stderr, one line."""
    def warn(line: str) -> None:
        print(f"depth {command}: {one_line(line)}", file=sys.stderr, flush=True)

    return warn


def int_list(name: str, text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise UsageError(f"--{name} takes integers like 1,4,16 (got {text!r})") from None
    if any(v < 1 for v in values):
        raise UsageError(f"--{name} takes positive integers (got {text!r})")
    return values
